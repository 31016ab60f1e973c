// The admin API's JSON answers, shared by its translation units
// (admin_api.cc, admin_ops.cc): a body with its status, and an error as
// {"code", "message"} with the HTTP status that fits the protocol's code.
#pragma once

#include <nlohmann/json.hpp>

#include "common/status.h"
#include "gateway/gateway.h"

namespace parley::admin {

gateway::HttpResponse JsonResponse(int status, const nlohmann::json& body);
gateway::HttpResponse ErrorResponse(const Status& s);

}  // namespace parley::admin
