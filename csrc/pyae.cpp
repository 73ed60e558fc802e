// The pyae operator library: every schema lives here, the kernels in cpu/ and cuda/.
//
// Conventions (DESIGN.md): x is (B, n), weight is (k, n) in the nn.Linear layout, bias is (k,).
//   a = x @ weight.T + bias,  h = sigmoid(a),  d = h * (1 - h),  c_l = ||weight_l||^2
//   mean_activation_l = (1/B) sum_i h_il
//   contractive       = (1/B) sum_i sum_l d_il^2 c_l      (mean squared Frobenius norm of dh/dx)

#include <Python.h>
#include <torch/library.h>

extern "C" {
// `import pyae._C` loads this shared object, whose static initializers register the
// operators below. The module itself exposes nothing.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",  // name
      "pyae's compiled operators; use them through torch.ops.pyae or pyae.ops",
      -1,    // no per-module state
      nullptr,
  };
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(pyae, m) {
  // Forward of the sigmoid encoder with the statistics of both regularizers, in one call:
  // one matrix product (bias folded in) and one fused pass over (B, k).
  m.def(
      "sigmoid_encoder(Tensor x, Tensor weight, Tensor? bias) -> "
      "(Tensor hidden, Tensor mean_activation, Tensor contractive)");
  // Its backward. Any upstream gradient may be None (that output was unused). output_mask
  // says which of (grad_x, grad_weight, grad_bias) are wanted; an unwanted one comes back as
  // an empty tensor of shape (0,) and costs nothing.
  m.def(
      "sigmoid_encoder_backward(Tensor? grad_hidden, Tensor? grad_mean_activation, "
      "Tensor? grad_contractive, Tensor x, Tensor weight, Tensor hidden, bool[3] output_mask) -> "
      "(Tensor grad_x, Tensor grad_weight, Tensor grad_bias)");
}
