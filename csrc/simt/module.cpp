// convx._simt: the emulated CUDA backend. Defines every convx schema again as
// torch.ops.convx_simt.* (CPU dispatch key; the kernels are csrc/cuda/*.cu
// compiled by g++ against csrc/simt, see conv2d.cpp etc. beside this file),
// and a small Python module for the launch log and the seed.
#include "../common/schemas.h"
#include "runtime.h"
#include "simt.h"

#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(convx_simt, m) {
  convx::define_schemas(m);
}

// convx_simt ops are reached below autograd (convx/simt.py redirects
// torch.ops.convx.* to them inside a TorchDispatchMode), so autograd has
// nothing to do here.
TORCH_LIBRARY_IMPL(convx_simt, Autograd, m) {
  for (const auto& name : convx::schema_names()) m.impl(name.c_str(), torch::CppFunction::makeFallthrough());
}

namespace {

PyObject* dims(const unsigned* d) { return Py_BuildValue("(III)", d[0], d[1], d[2]); }

PyObject* py_launches(PyObject*, PyObject*) {
  const auto log = simt::launches();
  PyObject* list = PyList_New(Py_ssize_t(log.size()));
  if (!list) return nullptr;
  for (size_t i = 0; i < log.size(); ++i) {
    const auto& r = log[i];
    PyObject* grid = dims(r.grid);
    PyObject* block = dims(r.block);
    PyObject* t = Py_BuildValue("(sNNnn)", r.kernel, grid, block, Py_ssize_t(r.dynamic_shared),
                                Py_ssize_t(r.static_shared));
    if (!t) {
      Py_DECREF(list);
      return nullptr;
    }
    PyList_SET_ITEM(list, Py_ssize_t(i), t);
  }
  return list;
}

PyObject* py_clear_launches(PyObject*, PyObject*) {
  simt::clear_launches();
  Py_RETURN_NONE;
}

PyObject* py_set_seed(PyObject*, PyObject* arg) {
  const unsigned long long s = PyLong_AsUnsignedLongLongMask(arg);
  if (PyErr_Occurred()) return nullptr;
  simt::set_seed(s);
  Py_RETURN_NONE;
}

PyObject* py_shared_objects(PyObject*, PyObject*) { return PyLong_FromSize_t(simt::shared_objects()); }

PyObject* py_selftest(PyObject*, PyObject* arg) {
  const char* name = PyUnicode_AsUTF8(arg);
  if (!name) return nullptr;
  std::vector<float> out;
  try {
    out = simt::selftest(name);
  } catch (const c10::Error& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what_without_backtrace());
    return nullptr;
  }
  PyObject* list = PyList_New(Py_ssize_t(out.size()));
  if (!list) return nullptr;
  for (size_t i = 0; i < out.size(); ++i) PyList_SET_ITEM(list, Py_ssize_t(i), PyFloat_FromDouble(out[i]));
  return list;
}

PyObject* py_selftest_names(PyObject*, PyObject*) {
  const auto names = simt::selftest_names();
  PyObject* list = PyList_New(Py_ssize_t(names.size()));
  if (!list) return nullptr;
  for (size_t i = 0; i < names.size(); ++i) PyList_SET_ITEM(list, Py_ssize_t(i), PyUnicode_FromString(names[i].c_str()));
  return list;
}

// set_max_grid_yz(n) -> previous value
PyObject* py_set_max_grid_yz(PyObject*, PyObject* arg) {
  const long v = PyLong_AsLong(arg);
  if (PyErr_Occurred()) return nullptr;
  if (v < 1 || v > 65535) {
    PyErr_SetString(PyExc_ValueError, "max_grid_yz must be in [1, 65535]");
    return nullptr;
  }
  auto& props = simt::mutable_device_props();
  const int old = props.max_grid_yz;
  props.max_grid_yz = int(v);
  return PyLong_FromLong(old);
}

PyMethodDef methods[] = {
    {"launches", py_launches, METH_NOARGS,
     "[(kernel, grid, block, dynamic_shared_bytes, static_shared_bytes)], oldest first"},
    {"clear_launches", py_clear_launches, METH_NOARGS, "empty the launch log"},
    {"set_seed", py_set_seed, METH_O, "seed the block order and the thread order after barriers"},
    {"shared_objects", py_shared_objects, METH_NOARGS, "number of __shared__ objects poisoned per block"},
    {"selftest", py_selftest, METH_O, "run one of the runtime's test kernels; returns its output"},
    {"selftest_names", py_selftest_names, METH_NOARGS, "names of the runtime's test kernels"},
    {"set_max_grid_yz", py_set_max_grid_yz, METH_O, "lower the gridDim.y/z limit; returns the previous one"},
    {nullptr, nullptr, 0, nullptr},
};

}  // namespace

PyMODINIT_FUNC PyInit__simt(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_simt", nullptr, -1, methods};
  return PyModule_Create(&module_def);
}
