// See test_paths.h. PARLEY_BIN_DIR and PARLEY_SOURCE_DIR are defined for
// this file alone (tests/CMakeLists.txt).

#include "test_paths.h"

namespace parley::testing {

std::string BinDir() { return PARLEY_BIN_DIR; }
std::string SourceDir() { return PARLEY_SOURCE_DIR; }

}  // namespace parley::testing
