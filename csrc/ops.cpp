// The kvtp operator library: one schema per C++ op, and the Python module stub.
//
// Backend kernels register against these schemas with TORCH_LIBRARY_IMPL in their
// own files (prune_cpu.cpp, ...). Shape-only fakes and autograd are registered from
// Python (kvtp_kernels/ops.py), which also documents every argument.
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
