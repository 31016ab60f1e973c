// parley::Connection — the SDK's connection and protocol layer: one
// WebSocket connection to parleyd speaking protocol v1 (docs/protocol.md).
//
// What it is: ws:// or wss:// (TLS, ConnectOptions::tls), request/response
// matching by request id, a queue of
// server-initiated frames (events), and the close code and reason when the
// server closes. What it is not: reconnects, the local cache and the offline
// outbox; those are parley::Client (parley/client.h), built on this layer.
//
// Threading and ownership: every Connection in the process shares one
// background I/O thread, started with the first Connection and running until
// the process exits (a thread per connection made thousands of clients in
// one process expensive). Every public method is thread-safe; Call blocks the
// calling thread until the response arrives or the timeout passes (never
// call it from the activity callback, which runs on the I/O thread and so
// must return quickly: it delays every other connection's I/O). Destroying
// the Connection closes the socket; once the destructor returns, the activity
// callback is never called again. No Boost types appear in this header.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace parley {

struct ConnectOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 8080;
  std::string path = "/v1/ws";
  int timeout_ms = 5000;  // TCP connect, TLS and WebSocket handshakes, together
  int receive_buffer_bytes = 0;  // SO_RCVBUF; 0 = system default (tests of slow readers)
  // wss:// instead of ws://: TLS 1.2 or newer. The server's certificate is
  // verified against `ca_file` (PEM, one or more certificates; "" = the
  // system's trusted CAs) and must name `host` (a DNS name, sent as SNI, or
  // an IP address).
  bool tls = false;
  std::string ca_file;
  // false: accept any server certificate. Tests only: it gives up the
  // protection against a man in the middle.
  bool verify_peer = true;
  // Sent as the Origin header when not empty (what a browser would send);
  // parleyd refuses foreign origins (docs/operations.md, "Origin check").
  std::string origin;
  // Offer permessage-deflate (RFC 7692). It is used only if the server
  // agrees (parleyd --ws-deflate); Connection::deflate() tells.
  bool deflate = false;
};

// Parses "ws://host:port", "wss://host:port" or plain "host:port" (= ws)
// into options->host, port and tls; an IPv6 host is written in brackets.
// A path after the port is taken as options->path. Returns false (options
// untouched) if the text is not such an address.
bool ParseServerAddress(const std::string& text, ConnectOptions* options);

// The outcome of one request.
struct Reply {
  bool ok = false;
  nlohmann::json result;  // the response's "result" object when ok
  std::string code;       // the error code when !ok ("timeout" / "closed" for local failures)
  std::string message;
  nlohmann::json frame;   // the whole frame as received (null for local failures)

  bool timed_out() const { return code == "timeout"; }
};

class Connection {
 public:
  // Connects and completes the WebSocket handshake. Returns nullptr and sets
  // *error on failure; when the server refused the upgrade with 503 or 429
  // and a Retry-After in seconds (a server at its connection limit), also
  // *retry_after_ms (else 0), which a client waits before trying again.
  static std::unique_ptr<Connection> Open(const ConnectOptions& options, std::string* error,
                                          int64_t* retry_after_ms = nullptr);
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Sends {"v":1,"id":<next id>,"type":type, ...fields} and waits for the
  // matching response or error frame.
  Reply Call(std::string_view type, nlohmann::json fields = nlohmann::json::object(), int timeout_ms = 10000);

  // Sends a request without waiting; returns its request id. The response is
  // collected later with Await.
  int64_t Start(std::string_view type, nlohmann::json fields = nlohmann::json::object());
  Reply Await(int64_t id, int timeout_ms = 10000);

  // Sends arbitrary bytes as one frame (for tests of bad input).
  void SendRaw(std::string bytes, bool binary = false);

  // The next server-initiated frame (type "event"), waiting up to timeout_ms.
  std::optional<nlohmann::json> NextEvent(int timeout_ms);
  // Error frames that matched no pending request (e.g. for unparseable frames).
  std::optional<nlohmann::json> NextUnmatchedError(int timeout_ms);

  // Whether the connection is closed, and the close code/reason the server sent
  // (code 0 if the socket just dropped).
  bool closed() const;
  uint16_t close_code() const;
  std::string close_reason() const;
  // Waits until closed; returns whether it is.
  bool WaitClosed(int timeout_ms);

  // Hex SHA-256 of the server's certificate (DER) for a TLS connection, ""
  // for a plain one. For pinning, and to see which certificate a server
  // presented (tests of certificate reloads).
  std::string peer_certificate_sha256() const;

  // Whether permessage-deflate was negotiated (offered with
  // ConnectOptions::deflate and accepted by the server).
  bool deflate() const;

  // Registers a function called on the I/O thread after every incoming frame
  // is queued (response, event or error) and once when the connection closes.
  // It must not block nor call methods of this Connection that wait; it is
  // meant to wake a consumer thread (parley::Client uses it). Replaces any
  // earlier callback; an empty function removes it.
  void SetActivityCallback(std::function<void()> fn);

  // Stops reading from the socket (a slow or stalled reader), and resumes.
  void PauseReading();
  void ResumeReading();

  // Closes with 1000 (normal) and waits briefly for the server's answer.
  void Close();
  // Drops the TCP connection without a close handshake (a network failure).
  void Abort();

  // The implementation (connection.cc); named here only so that its
  // stream-specific parts can derive from it.
  struct Impl;

 private:
  Connection();
  std::shared_ptr<Impl> impl_;  // shared with the I/O thread's pending handlers
};

}  // namespace parley
