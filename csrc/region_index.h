// lrc_fast._C: the loss's region index (tile sort) on CUDA and on the SIMT simulator.
#pragma once

#include <torch/extension.h>

namespace lrc {

// Adds region_index_cuda and region_index_simt to the extension module.
void bind_region_index(pybind11::module_& m);

}  // namespace lrc
