// The admin API's JSON answers, shared by its translation units
// (admin_api.cc, admin_ops.cc): a body with its status, and an error as
// {"code", "message"} with the HTTP status that fits the protocol's code.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <string>

#include "common/status.h"
#include "gateway/gateway.h"

namespace parley::admin {

gateway::HttpResponse JsonResponse(int status, const nlohmann::json& body);
gateway::HttpResponse ErrorResponse(const Status& s);

// "a=1&b=2" (the part of a target after '?') as a map; a name without '='
// maps to "".
std::map<std::string, std::string> ParseQuery(const std::string& query);
// A decimal integer (an optional '-') within [min, max] into *out.
bool ParseInt(const std::string& text, int64_t* out, int64_t min, int64_t max);

}  // namespace parley::admin
