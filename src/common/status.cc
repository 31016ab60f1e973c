#include "common/status.h"

namespace parley {

namespace {
struct CodeInfo {
  std::string_view name;
  bool retryable;
};
constexpr CodeInfo kCodes[] = {
#define PARLEY_X(e, name, retry) {name, retry},
    PARLEY_ERROR_CODES(PARLEY_X)
#undef PARLEY_X
};
}  // namespace

std::string_view ErrorCodeName(ErrorCode code) { return kCodes[static_cast<int>(code)].name; }
bool ErrorCodeRetryable(ErrorCode code) { return kCodes[static_cast<int>(code)].retryable; }

std::string Status::ToString() const {
  if (ok()) return "ok";
  std::string s(ErrorCodeName(code_));
  s += ": ";
  s += message_;
  return s;
}

}  // namespace parley
