// parleyd: the Parley server. See `parleyd --help` and docs/operations.md.
#include <iostream>

#include "server/app.h"
#include "server/config.h"

int main(int argc, char** argv) {
  int exit_code = -1;
  auto config = parley::server::ParseConfig(argc, argv, &exit_code);
  if (!config) {
    if (exit_code >= 0) return exit_code;
    std::cerr << "parleyd: " << config.error().message() << "\n";
    return 2;
  }
  return parley::server::RunServer(*config);
}
