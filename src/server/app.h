// Wires parleyd together: store, fabric, core, gateway; serves /healthz and
// /metrics; handles SIGTERM/SIGINT with a graceful shutdown and SIGHUP with a
// reload of the TLS certificate and key. Returns the
// process exit code.
#pragma once

#include "server/config.h"

namespace parley::server {

int RunServer(const ServerConfig& config);

}  // namespace parley::server
