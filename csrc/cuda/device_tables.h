// What a device module (_cuda or _emu) exports: one kernel table per op, by name.
#pragma once
#include <vector>

#include "core/registry.h"

namespace ck {

struct NamedTable {
  const char* op;
  KernelTable table;
};

// Defined once per device module, in cuda/tables.h.
const std::vector<NamedTable>& device_tables();

}  // namespace ck
