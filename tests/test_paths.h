// Where a test finds this build's programs and the checkout's files.
//
// The two paths are compiled into one small library (parley_test_paths,
// tests/CMakeLists.txt), not into every test object: a -D with an absolute
// path on each test's command line made ccache miss every test object of a
// second checkout (the fresh clone's check), about half the ASan build.
#pragma once

#include <string>

namespace parley::testing {

// This build tree's bin directory: parleyd, parley-admin, parley, parley-check.
std::string BinDir();
// The checkout's top directory: docs/, scripts/, web/.
std::string SourceDir();

}  // namespace parley::testing
