// Status and Result<T>: how expected failures travel in protocol, core, store
// and fabric. No exceptions cross module boundaries or the message path.
//
// A Status is cheap when OK (no allocation). Its code is an ErrorCode from
// common/error_code.h, which maps one to one onto the protocol's documented
// error codes, so a store or core failure reaches the client unchanged.
// Result<T> mirrors std::expected's member names (has_value, value, error) so
// moving to std::expected later is mechanical.
#pragma once

#include <cassert>
#include <string>
#include <utility>
#include <variant>

#include "common/error_code.h"

namespace parley {

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(ErrorCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return Status(); }

  bool ok() const { return code_ == ErrorCode::kOk; }
  ErrorCode code() const { return code_; }
  const std::string& message() const { return message_; }
  std::string ToString() const;

 private:
  ErrorCode code_ = ErrorCode::kOk;
  std::string message_;
};

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Status error) : v_(std::move(error)) { assert(!std::get<Status>(v_).ok()); }  // NOLINT

  bool has_value() const { return v_.index() == 0; }
  explicit operator bool() const { return has_value(); }

  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

  // REQUIRES: !has_value().
  const Status& error() const { return std::get<1>(v_); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace parley
