// The kvtp operator library: the schema of every C++ op, and the Python module stub.
//
// Backend kernels register against these schemas with TORCH_LIBRARY_IMPL in their
// own files (prune_cpu.cpp, merge_cpu.cpp, pack_*.cpp/.cu). Shape-only fakes, autograd
// and the Python backends (reference, Triton) are registered from kvtp_kernels/ops.py,
// whose OpSpec of each op describes the same schema (checked on import).
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(kvtp, m) {
  m.def(
      "keep_counts(Tensor? scores, Tensor? frame_embeds, Tensor? query_embeds, Tensor? logit_scale, "
      "Tensor? logit_bias, int num_tokens, int budget, float ratio, float temperature, int min_tokens, "
      "bool paper) -> Tensor");
  m.def(
      "prune_tokens(Tensor tokens, Tensor? scores, Tensor? frame_embeds, Tensor? query_embeds, "
      "Tensor? logit_scale, Tensor? logit_bias, Tensor? token_scores, Tensor? frame_counts, int budget, "
      "int total_rows, float temperature, int min_tokens) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "merge_neighbors(Tensor tokens, Tensor merge_keys, Tensor weights, Tensor indices, int num_neighbors, "
      "bool mean) -> Tensor");
  m.def(
      "pack_plan(Tensor? text_mask, Tensor video_mask, Tensor? sample_video, Tensor video_cu_seqlens, "
      "Tensor video_indices, str layout, int num_frames, int grid_width, int tokens_per_frame) "
      "-> (Tensor cu_seqlens, Tensor sample_info, Tensor text_rank, Tensor newline_cu, Tensor summary)");
  m.def(
      "pack_rows(Tensor text_embeds, Tensor video_tokens, Tensor? newline, Tensor cu_seqlens, Tensor sample_info, "
      "Tensor text_rank, Tensor frame_cu_seqlens, Tensor newline_cu, str layout, int num_frames, int length, "
      "bool padded, bool left_padding) -> (Tensor embeds, Tensor source_index, Tensor position_ids)");
}

// `import kvtp_kernels._C` loads this library (and so runs the registrations above);
// the module itself only says whether CUDA kernels were compiled in.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "kvtp_kernels C++/CUDA ops", -1, nullptr};
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) return nullptr;
#ifdef KVTP_WITH_CUDA
  PyModule_AddIntConstant(module, "WITH_CUDA", 1);
#else
  PyModule_AddIntConstant(module, "WITH_CUDA", 0);
#endif
  return module;
}
