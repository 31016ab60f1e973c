// parley_xmpp_driver: an open-loop XMPP load driver (issue 9, "side by side"):
// the 1:1 throughput scenario of parley-bench, spoken as plain XMPP over TCP
// to ejabberd or Prosody (RFC 6120 client: stream, SASL PLAIN, resource
// bind, session if the server requires it, initial presence; no TLS).
//
// Users are "<prefix><n>" for n in [first_user, first_user + 2 * pairs);
// user 2k and 2k+1 are partners. At an aggregate offered rate R the driver
// sends message k at the intended time start + k / R, from user k mod 2P to
// its partner's full JID (both directions of every pair take turns). The
// <body> carries the run, a sequence number and the intended send time
// (CLOCK_MONOTONIC ns), padded so that the stanza the driver writes is
// stanza_bytes long; the receiver measures one-way latency from the
// intended time, so a driver or server that falls behind shows up in the
// latency (no coordinated omission). With receipts on, every message asks
// for a XEP-0184 receipt, the receiver sends it, and the sender measures
// intended send -> receipt.
//
// Each RunRate() has a warm-up, a measurement window and a drain: only
// messages whose intended time falls in the window are counted; the drain
// waits (up to drain_s) for the window's messages still in flight after the
// window, and then the next rate can start. Every connection stays logged in
// across rates.
//
// Threading: every connection is driven by one Boost.Asio io_context run on
// the thread that calls Register() / Login() / RunRate() (no thread per
// connection). The class is not thread-safe: one caller thread.
// Errors: the methods return false / an error string in the result; nothing
// throws once the object is constructed.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace parley::xmppbench {

struct DriverOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 5222;
  std::string domain = "localhost";  // the XMPP domain (stream 'to', JIDs)
  std::string user_prefix = "u";
  std::string password = "bench";    // every user's password
  std::string resource = "bench";
  int first_user = 0;
  int pairs = 500;
  size_t stanza_bytes = 140;         // size of each message stanza the driver writes
  bool receipts = false;             // XEP-0184 receipts
  double warmup_s = 2;
  double duration_s = 12;
  double drain_s = 3;
  int connect_concurrency = 100;     // logins / registrations in flight at once
  double login_timeout_s = 120;      // for all logins (or registrations) together
  int server_pid = 0;                // 0: no server CPU / RSS figures
};

// Percentiles of one latency sample, in milliseconds.
struct LatencySummary {
  size_t count = 0;
  double p50 = 0, p90 = 0, p99 = 0, p999 = 0, max = 0;
};

struct RatePoint {
  double offered_per_s = 0;     // the nominal rate asked for
  uint64_t sent = 0;            // messages with an intended time in the window
  uint64_t delivered = 0;       // ...of which arrived at the partner by the end of the drain
  double sent_per_s = 0;        // sent / duration
  double delivered_per_s = 0;   // delivered / duration
  double arrival_per_s = 0;     // messages of this run arriving during the window / duration
  LatencySummary latency;       // intended send -> arrival, for the window's messages
  LatencySummary receipt_rtt;   // intended send -> receipt back at the sender (receipts only)
  uint64_t receipts = 0;        // receipts received for the window's messages
  double max_send_lag_ms = 0;   // how far behind its schedule the driver wrote (its own health)
  double server_cpu_percent = -1;  // of one core, over the window (-1: no --server-pid)
  double server_rss_mb = -1;       // at the end of the window
  double gen_cpu_percent = 0;      // the driver's own CPU, of one core, over the window
  double machine_busy_percent = 0; // every CPU's busy time over the window, % of one core (200 = both
                                   // of two busy): minus server and driver, what other work took
  uint64_t dropped_bytes = 0;      // stanzas dropped because a connection's send queue was full
  uint64_t error_stanzas = 0;      // <message type='error'/> bounces received
  std::string first_error_stanza;  // the first of them, for the report
  int connections_lost = 0;        // connections the server closed during the run
};

struct RegisterResult {
  int created = 0;
  int existed = 0;  // "conflict": already registered (counts as success)
  int failed = 0;
  double seconds = 0;
  std::string first_error;
};

class XmppDriver {
 public:
  explicit XmppDriver(DriverOptions options);
  ~XmppDriver();
  XmppDriver(const XmppDriver&) = delete;
  XmppDriver& operator=(const XmppDriver&) = delete;

  // Registers every user of the run (XEP-0077 in-band registration),
  // connect_concurrency at a time, each on its own short-lived connection.
  RegisterResult Register();

  // Connects and logs in all 2 * pairs users and sends initial presence.
  // Returns false (and sets *error) if any login failed or timed out.
  [[nodiscard]] bool Login(std::string* error, double* seconds);

  // One offered rate (messages/s, all pairs together). REQUIRES: Login() succeeded.
  RatePoint RunRate(double rate);

  // Closes every stream and connection.
  void Close();

  const DriverOptions& options() const { return options_; }

 private:
  struct Impl;
  DriverOptions options_;
  std::unique_ptr<Impl> impl_;
};

// Percentiles of `ns` (nanoseconds; sorted in place), in ms.
LatencySummary Summarize(std::vector<int64_t>& ns);

// The message body: "R<run> S<seq> T<intended ns> " padded with 'x' to
// `body_bytes` (never shorter than the fields). Parsed back by ParseBody.
std::string MakeBody(uint32_t run, uint64_t seq, int64_t intended_ns, size_t body_bytes);
struct BodyFields {
  uint32_t run = 0;
  uint64_t seq = 0;
  int64_t intended_ns = 0;
};
[[nodiscard]] bool ParseBody(std::string_view body, BodyFields* out);

}  // namespace parley::xmppbench
