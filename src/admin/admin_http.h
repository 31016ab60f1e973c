// The admin API's JSON answers, shared by its translation units
// (admin_api.cc, admin_ops.cc): a body with its status, and an error as
// {"code", "message"} with the HTTP status that fits the protocol's code.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <string>
#include <type_traits>

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

// An optional field of a JSON body (a string or a bool): absent or null
// leaves *out as it is; a value of another type is a bad_request naming the
// field (nlohmann's value() would throw, out of the I/O thread).
template <typename T>
Status OptionalField(const nlohmann::json& obj, const char* key, T* out) {
  static_assert(std::is_same_v<T, bool> || std::is_same_v<T, std::string>);
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return Status::Ok();
  if constexpr (std::is_same_v<T, bool>) {
    if (!it->is_boolean()) return Status(ErrorCode::kBadRequest, std::string("field '") + key + "' must be true or false");
  } else {
    if (!it->is_string()) return Status(ErrorCode::kBadRequest, std::string("field '") + key + "' must be a string");
  }
  *out = it->template get<T>();
  return Status::Ok();
}

}  // namespace parley::admin
