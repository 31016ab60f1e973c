# Helpers shared by every CMakeLists.txt of the project.

# Warnings are errors on our own targets only (never on third-party headers,
# which are included as SYSTEM by their imported targets).
function(parley_warnings target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic -Werror
    -Wshadow -Wnon-virtual-dtor -Wold-style-cast -Wcast-align -Woverloaded-virtual
    -Wnull-dereference -Wimplicit-fallthrough)
  # g++ 12's flow-sensitive warnings misfire at -O2/-O3 on std::variant (our
  # Result<T>) and inside Boost.Asio; the Debug (ASan) tree, which every test
  # runs on, keeps -Wnull-dereference. Off, not merely non-fatal, so that a
  # Release build prints no warnings.
  if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
    target_compile_options(${target} PRIVATE
      $<$<NOT:$<CONFIG:Debug>>:-Wno-maybe-uninitialized -Wno-null-dereference -Wno-restrict>)
  endif()
endfunction()

# parley_library(name SOURCES ... DEPS ...): one library per module, static
# unless PARLEY_SHARED_LIBS (the test tree: see the option in CMakeLists.txt).
function(parley_library name)
  cmake_parse_arguments(ARG "" "" "SOURCES;DEPS" ${ARGN})
  add_library(${name} ${PARLEY_LIBRARY_KIND} ${ARG_SOURCES})
  target_include_directories(${name} PUBLIC ${PROJECT_SOURCE_DIR}/src)
  target_link_libraries(${name} PUBLIC ${ARG_DEPS})
  parley_warnings(${name})
endfunction()

# Targets that include Boost.Asio/Beast: the library is compiled once, in
# parley_asio (src/gateway/asio_impl.cc); everyone else links it.
function(parley_uses_asio target)
  target_link_libraries(${target} PUBLIC parley_asio)
endfunction()

# parley_test(name SOURCES ... DEPS ... [LABELS ...] [ARGS ...]): a GoogleTest
# binary registered with CTest, run with ARGS (e.g. a --gtest_filter when
# other CTest tests run the rest of the binary). Tests get the build's bin
# dir to find parleyd.
function(parley_test name)
  cmake_parse_arguments(ARG "MANUAL" "TIMEOUT" "SOURCES;DEPS;LABELS;ARGS" ${ARGN})
  add_executable(${name} ${ARG_SOURCES})
  # parley_test_paths (tests/test_paths.h): the build's bin directory and the
  # checkout, compiled into that library alone so that test objects stay the
  # same in every checkout (ccache).
  target_link_libraries(${name} PRIVATE ${ARG_DEPS} parley_test_paths GTest::gtest GTest::gtest_main)
  target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR}/tests ${PROJECT_SOURCE_DIR}/src)
  parley_warnings(${name})
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 300)
  endif()
  # MANUAL: built, but run by scripts/test.sh itself (not by CTest).
  if(NOT ARG_MANUAL)
    add_test(NAME ${name} COMMAND ${name} ${ARG_ARGS})
    set_tests_properties(${name} PROPERTIES TIMEOUT ${ARG_TIMEOUT} LABELS "${ARG_LABELS}")
  endif()
endfunction()
