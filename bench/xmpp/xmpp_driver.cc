// The driver is one io_context run on the caller's thread. Each public call
// restarts it and runs it until its own phase says stop (all logins done, a
// rate's drain over); reads stay posted across phases, so a connection is
// always read and a stanza that arrives between phases is handled on the
// next run.
//
// Sending is paced by a 1 ms timer: each tick writes every message whose
// intended time has come (so a late tick sends a burst, each stamped with
// its own intended time, not the tick's). A connection's stanzas of one
// tick go out in one write; while a write is in flight the next ones queue,
// up to kMaxQueuedBytes, beyond which they are dropped and counted (a
// server that stops reading must not grow the driver without bound; a
// dropped message is never delivered, so it shows up as delivered < sent).
#include "xmpp_driver.h"

#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <fstream>
#include <sstream>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>

#include "xml_stream.h"

namespace parley::xmppbench {

namespace {

namespace asio = boost::asio;
using asio::ip::tcp;

constexpr size_t kReadBufferBytes = 16 * 1024;
constexpr size_t kMaxQueuedBytes = 4 * 1024 * 1024;  // per connection, see above
constexpr auto kTick = std::chrono::milliseconds(1);
constexpr int64_t kStartDelayNs = 50'000'000;  // first intended send, after RunRate() starts

int64_t MonoNs() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

double SelfCpuSeconds() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

// utime + stime of a process (all its threads) in seconds; -1 if unreadable.
double ProcessCpuSeconds(int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(in, line)) return -1;
  const size_t paren = line.rfind(')');
  if (paren == std::string::npos) return -1;
  std::istringstream rest(line.substr(paren + 2));
  std::string field;
  // Fields after ")" start at 3 (state); utime and stime are 14 and 15.
  double utime = -1, stime = -1;
  for (int i = 3; i <= 15 && rest >> field; ++i) {
    if (i == 14) utime = std::stod(field);
    if (i == 15) stime = std::stod(field);
  }
  if (utime < 0 || stime < 0) return -1;
  return (utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

// Busy time of the whole machine (every CPU; /proc/stat: all but idle and iowait), in seconds.
double MachineBusySeconds() {
  std::ifstream in("/proc/stat");
  std::string cpu;
  in >> cpu;
  double total = 0, v = 0;
  for (int i = 0; i < 10 && in >> v; ++i) {
    if (i == 3 || i == 4) continue;  // idle, iowait
    if (i == 8 || i == 9) continue;  // guest, guest_nice: already in user / nice
    total += v;
  }
  return total / static_cast<double>(sysconf(_SC_CLK_TCK));
}

double ProcessRssMb(int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  }
  return -1;
}

}  // namespace

LatencySummary Summarize(std::vector<int64_t>& ns) {
  LatencySummary s;
  s.count = ns.size();
  if (ns.empty()) return s;
  std::sort(ns.begin(), ns.end());
  const auto at = [&](double q) {  // nearest rank
    const size_t i = std::min(ns.size() - 1, static_cast<size_t>(std::ceil(q * static_cast<double>(ns.size()) - 1e-9)) - 1);
    return static_cast<double>(ns[i]) / 1e6;
  };
  s.p50 = at(0.50);
  s.p90 = at(0.90);
  s.p99 = at(0.99);
  s.p999 = at(0.999);
  s.max = static_cast<double>(ns.back()) / 1e6;
  return s;
}

std::string MakeBody(uint32_t run, uint64_t seq, int64_t intended_ns, size_t body_bytes) {
  std::string body = "R" + std::to_string(run) + " S" + std::to_string(seq) + " T" + std::to_string(intended_ns) + " ";
  if (body.size() < body_bytes) body.append(body_bytes - body.size(), 'x');
  return body;
}

bool ParseBody(std::string_view body, BodyFields* out) {
  const auto field = [&](char tag, size_t& pos, auto& value) {
    if (pos >= body.size() || body[pos] != tag) return false;
    const char* begin = body.data() + pos + 1;
    const char* end = body.data() + body.size();
    const auto [ptr, ec] = std::from_chars(begin, end, value);
    if (ec != std::errc() || ptr == begin || ptr == end || *ptr != ' ') return false;
    pos = static_cast<size_t>(ptr - body.data()) + 1;
    return true;
  };
  size_t pos = 0;
  BodyFields f;
  if (!field('R', pos, f.run) || !field('S', pos, f.seq) || !field('T', pos, f.intended_ns)) return false;
  *out = f;
  return true;
}

struct XmppDriver::Impl {
  enum class State { kConnecting, kStream, kAuth, kRestart, kBind, kSession, kOnline, kRegister, kDone, kFailed };

  struct Conn {
    explicit Conn(asio::io_context& io) : sock(io) {}
    tcp::socket sock;
    XmlStreamSplitter xml;
    std::array<char, kReadBufferBytes> rbuf{};
    std::string out;      // queued, not yet being written
    std::string writing;  // the buffer of the write in flight
    bool write_in_flight = false;
    bool closed = false;
    State state = State::kConnecting;
    int index = 0;  // 0 .. 2P-1
    std::string user;
    std::string full_jid;
    bool session_required = false;
  };

  explicit Impl(const DriverOptions& o) : opt(o) {}

  static std::string StateName(State s) {
    switch (s) {
      case State::kConnecting: return "connect";
      case State::kStream: return "stream open";
      case State::kAuth: return "SASL";
      case State::kRestart: return "stream restart";
      case State::kBind: return "bind";
      case State::kSession: return "session";
      case State::kOnline: return "online";
      case State::kRegister: return "registration";
      case State::kDone: return "closing";
      case State::kFailed: return "failed";
    }
    return "?";
  }

  // --- connection plumbing -------------------------------------------------

  void Start(Conn& c) {
    c.sock.async_connect(endpoint, [this, &c](const boost::system::error_code& ec) {
      if (ec) return Fail(c, "connect: " + ec.message());
      boost::system::error_code ignored;
      c.sock.set_option(tcp::no_delay(true), ignored);
      c.state = State::kStream;
      Send(c, StreamHeader(opt.domain));
      DoRead(c);
    });
  }

  void DoRead(Conn& c) {
    c.sock.async_read_some(asio::buffer(c.rbuf), [this, &c](const boost::system::error_code& ec, size_t n) {
      if (ec) {
        if (c.state == State::kDone) return;  // we closed it
        return Fail(c, "read: " + ec.message());
      }
      events.clear();
      if (!c.xml.Feed(std::string_view(c.rbuf.data(), n), events)) return Fail(c, "XML: " + c.xml.error());
      for (auto& ev : events) {
        if (c.state == State::kFailed || c.state == State::kDone) return;
        OnEvent(c, ev);
      }
      if (c.state != State::kFailed && c.state != State::kDone) DoRead(c);
    });
  }

  void Send(Conn& c, std::string_view bytes) {
    if (c.closed) return;
    if (c.out.size() + bytes.size() > kMaxQueuedBytes) {
      run_dropped_bytes += bytes.size();
      return;
    }
    c.out.append(bytes);
    Flush(c);
  }

  // Queues without writing; Flush() later (one write per tick and connection).
  void Queue(Conn& c, std::string_view bytes) {
    if (c.closed) return;
    if (c.out.size() + bytes.size() > kMaxQueuedBytes) {
      run_dropped_bytes += bytes.size();
      return;
    }
    c.out.append(bytes);
  }

  void Flush(Conn& c) {
    if (c.write_in_flight || c.out.empty() || c.closed) return;
    c.writing.clear();
    c.writing.swap(c.out);
    c.write_in_flight = true;
    asio::async_write(c.sock, asio::buffer(c.writing), [this, &c](const boost::system::error_code& ec, size_t) {
      c.write_in_flight = false;
      if (ec) {
        if (c.state == State::kDone) return;
        return Fail(c, "write: " + ec.message());
      }
      Flush(c);
      if (c.state == State::kDone) CloseAfterWrite(c);
    });
  }

  void CloseConn(Conn& c) {
    if (c.closed) return;
    c.closed = true;
    boost::system::error_code ignored;
    c.sock.shutdown(tcp::socket::shutdown_both, ignored);
    c.sock.close(ignored);
  }

  void Fail(Conn& c, const std::string& why) {
    if (c.state == State::kFailed) return;
    const State was = c.state;
    c.state = State::kFailed;
    CloseConn(c);
    if (first_error.empty()) first_error = c.user + " (in " + StateName(was) + "): " + why;
    if (was == State::kOnline) {
      ++connections_lost;
      return;
    }
    if (was == State::kRegister || phase == Phase::kRegister) {
      ++reg.failed;
      SetupStepDone();
      return;
    }
    ++login_failed;
    SetupStepDone();
  }

  // --- protocol --------------------------------------------------------------

  void OnEvent(Conn& c, XmlEvent& ev) {
    if (ev.kind == XmlEvent::Kind::kStreamOpen) return;
    if (ev.kind == XmlEvent::Kind::kStreamClose) return Fail(c, "the server closed the stream");
    const StanzaView st(ev.text);
    const std::string_view name = st.Name();
    if (name == "message") return OnMessage(c, st);
    if (name == "stream:error") return Fail(c, "stream error: " + ev.text);
    switch (c.state) {
      case State::kStream:
        if (name != "stream:features") return;
        if (phase == Phase::kRegister) {
          c.state = State::kRegister;
          return Send(c, RegisterIq("reg", c.user, opt.password));
        }
        if (ev.text.find(">PLAIN<") == std::string::npos) return Fail(c, "the server does not offer SASL PLAIN");
        c.state = State::kAuth;
        return Send(c, SaslPlainAuth(c.user, opt.password));
      case State::kAuth:
        if (name == "success") {
          c.xml.Reset();
          c.state = State::kRestart;
          return Send(c, StreamHeader(opt.domain));
        }
        if (name == "failure") return Fail(c, "SASL failure: " + ev.text);
        return;
      case State::kRestart:
        if (name != "stream:features") return;
        if (!st.HasChild("bind")) return Fail(c, "no resource binding offered");
        // RFC 6121 sessions are obsolete; bind then session only when the
        // server offers it without <optional/>.
        c.session_required = st.HasChild("session") && ev.text.find("<optional") == std::string::npos;
        c.state = State::kBind;
        return Send(c, BindIq("bind", opt.resource));
      case State::kBind:
        if (name != "iq" || st.Attr("id") != "bind") return;
        if (st.Attr("type") != "result") return Fail(c, "bind failed: " + ev.text);
        if (auto jid = st.ChildText("jid")) c.full_jid = *jid;
        if (c.full_jid.empty()) return Fail(c, "bind result without a JID");
        if (c.session_required) {
          c.state = State::kSession;
          return Send(c, SessionIq("sess"));
        }
        return GoOnline(c);
      case State::kSession:
        if (name != "iq" || st.Attr("id") != "sess") return;
        if (st.Attr("type") != "result") return Fail(c, "session failed: " + ev.text);
        return GoOnline(c);
      case State::kRegister:
        if (name != "iq" || st.Attr("id") != "reg") return;
        if (st.Attr("type") == "result") {
          ++reg.created;
        } else if (st.HasChild("conflict")) {
          ++reg.existed;
        } else {
          return Fail(c, "registration failed: " + ev.text);
        }
        Send(c, "</stream:stream>");
        c.state = State::kDone;
        CloseAfterWrite(c);
        return SetupStepDone();
      default:
        return;  // presence, roster pushes, iq results we do not track
    }
  }

  // Closes once the queued bytes (the closing tag) are written.
  void CloseAfterWrite(Conn& c) {
    if (!c.write_in_flight && c.out.empty()) CloseConn(c);
  }

  void GoOnline(Conn& c) {
    c.state = State::kOnline;
    Send(c, "<presence/>");
    ++online;
    SetupStepDone();
  }

  void OnMessage(Conn& c, const StanzaView& st) {
    if (c.state != State::kOnline) return;
    const int64_t now = MonoNs();
    if (st.Attr("type") == "error") {  // a bounce: the server refused or could not deliver
      ++run_error_stanzas;
      if (first_error_stanza.empty()) first_error_stanza = std::string(st.text());
      return;
    }
    if (auto body = st.ChildText("body")) {
      BodyFields f;
      if (!ParseBody(*body, &f)) return;
      if (f.run != run) return;  // a straggler from an earlier rate
      if (now >= window_start && now < window_end) ++window_arrivals;
      if (f.intended_ns >= window_start && f.intended_ns < window_end) {
        latencies.push_back(now - f.intended_ns);
      }
      if (opt.receipts && st.HasChild("request")) {
        if (auto from = st.Attr("from"); from && !from->empty()) {
          if (auto id = st.Attr("id")) Send(c, ReceiptMessage(*from, *id));
        }
      }
      return;
    }
    if (auto id = st.ChildAttr("received", "id")) {
      // Our ids are "m<run>.<intended ns>".
      if (id->size() < 2 || (*id)[0] != 'm') return;
      const size_t dot = id->find('.');
      if (dot == std::string::npos) return;
      uint32_t id_run = 0;
      int64_t intended = 0;
      const char* b = id->data();
      if (std::from_chars(b + 1, b + dot, id_run).ec != std::errc()) return;
      if (std::from_chars(b + dot + 1, b + id->size(), intended).ec != std::errc()) return;
      if (id_run != run) return;
      if (intended >= window_start && intended < window_end) receipt_rtts.push_back(now - intended);
    }
  }

  // --- set-up phases (registration, login) -----------------------------------

  enum class Phase { kIdle, kRegister, kLogin, kRun };

  void SetupStepDone() {
    if (phase != Phase::kRegister && phase != Phase::kLogin) return;
    --in_flight;
    LaunchMore();
    if (in_flight == 0 && next_to_start >= static_cast<int>(conns.size())) io.stop();
  }

  void LaunchMore() {
    while (in_flight < opt.connect_concurrency && next_to_start < static_cast<int>(conns.size())) {
      ++in_flight;
      Start(*conns[static_cast<size_t>(next_to_start++)]);
    }
  }

  bool Resolve(std::string* error) {
    boost::system::error_code ec;
    const auto addr = asio::ip::make_address(opt.host, ec);
    if (ec) {
      tcp::resolver resolver(io);
      auto results = resolver.resolve(opt.host, std::to_string(opt.port), ec);
      if (ec || results.empty()) {
        *error = "cannot resolve " + opt.host + ": " + ec.message();
        return false;
      }
      endpoint = results.begin()->endpoint();
      return true;
    }
    endpoint = tcp::endpoint(addr, opt.port);
    return true;
  }

  void MakeConns() {
    for (auto& c : conns) CloseConn(*c);
    io.restart();
    io.run();  // the closed sockets' handlers run before their connections go
    conns.clear();
    const int users = 2 * opt.pairs;
    for (int i = 0; i < users; ++i) {
      auto c = std::make_unique<Conn>(io);
      c->index = i;
      c->user = opt.user_prefix + std::to_string(opt.first_user + i);
      conns.push_back(std::move(c));
    }
  }

  // Runs the set-up phase until every connection finished or the timeout.
  bool RunSetup(Phase p) {
    phase = p;
    in_flight = 0;
    next_to_start = 0;
    io.restart();
    LaunchMore();
    bool timed_out = false;
    asio::steady_timer deadline(io, std::chrono::milliseconds(static_cast<int64_t>(opt.login_timeout_s * 1000)));
    deadline.async_wait([&](const boost::system::error_code& ec) {
      if (ec) return;
      timed_out = true;
      io.stop();
    });
    io.run();
    deadline.cancel();
    io.restart();
    io.poll();  // runs the cancelled deadline's handler while `timed_out` is alive
    phase = Phase::kIdle;
    return !timed_out;
  }

  // --- the rate run -----------------------------------------------------------

  void Tick() {
    const int64_t now = MonoNs();
    const int64_t send_until = std::min(now + 1, window_end);
    const int users = static_cast<int>(conns.size());
    // Message k is due at run_start + k * 1e9 / rate.
    while (true) {
      const int64_t intended = run_start + static_cast<int64_t>(static_cast<double>(next_seq) * ns_per_msg);
      if (intended >= send_until) break;
      Conn& from = *conns[static_cast<size_t>(next_seq % static_cast<uint64_t>(users))];
      const Conn& to = *conns[static_cast<size_t>(from.index ^ 1)];
      if (from.state == State::kOnline) {
        const std::string id = "m" + std::to_string(run) + "." + std::to_string(intended);
        // The body is padded so that the whole stanza is stanza_bytes long
        // (the fields need no escaping, so the body adds its own length).
        std::string body = MakeBody(run, next_seq, intended, 0);
        const size_t bare = ChatMessage(to.full_jid, id, body, opt.receipts).size();
        if (bare < opt.stanza_bytes) body = MakeBody(run, next_seq, intended, body.size() + opt.stanza_bytes - bare);
        const std::string stanza = ChatMessage(to.full_jid, id, body, opt.receipts);
        Queue(from, stanza);
        dirty.push_back(&from);
      }
      if (intended >= window_start) ++window_sent;
      max_lag_ns = std::max(max_lag_ns, now - intended);
      ++next_seq;
    }
    for (Conn* c : dirty) Flush(*c);
    dirty.clear();
    if (now >= window_end) {
      EndWindow();
      return Drain();
    }
    if (now >= window_start && !window_started) StartWindow();
    tick_timer.expires_after(kTick);
    tick_timer.async_wait([this](const boost::system::error_code& ec) {
      if (!ec) Tick();
    });
  }

  void StartWindow() {
    window_started = true;
    cpu_server0 = opt.server_pid > 0 ? ProcessCpuSeconds(opt.server_pid) : -1;
    cpu_self0 = SelfCpuSeconds();
    machine_busy0 = MachineBusySeconds();
    wall0 = MonoNs();
  }

  void EndWindow() {
    const double wall = static_cast<double>(MonoNs() - wall0) / 1e9;
    point.gen_cpu_percent = 100.0 * (SelfCpuSeconds() - cpu_self0) / wall;
    point.machine_busy_percent = 100.0 * (MachineBusySeconds() - machine_busy0) / wall;
    if (opt.server_pid > 0) {
      const double cpu1 = ProcessCpuSeconds(opt.server_pid);
      if (cpu1 >= 0 && cpu_server0 >= 0) point.server_cpu_percent = 100.0 * (cpu1 - cpu_server0) / wall;
      point.server_rss_mb = ProcessRssMb(opt.server_pid);
    }
  }

  // Waits until every message of the window arrived (and, with receipts, its
  // receipt), or until drain_s.
  void Drain() {
    const bool all_in = latencies.size() >= window_sent && (!opt.receipts || receipt_rtts.size() >= window_sent);
    if (all_in || MonoNs() >= drain_end) {
      io.stop();
      return;
    }
    tick_timer.expires_after(std::chrono::milliseconds(10));
    tick_timer.async_wait([this](const boost::system::error_code& ec) {
      if (!ec) Drain();
    });
  }

  const DriverOptions& opt;
  asio::io_context io{1};
  tcp::endpoint endpoint;
  std::vector<std::unique_ptr<Conn>> conns;
  std::vector<XmlEvent> events;
  std::vector<Conn*> dirty;
  asio::steady_timer tick_timer{io};
  std::string first_error;

  Phase phase = Phase::kIdle;
  int in_flight = 0;
  int next_to_start = 0;
  int online = 0;
  int login_failed = 0;
  RegisterResult reg;

  // The current rate run.
  uint32_t run = 0;
  double ns_per_msg = 0;
  int64_t run_start = 0, window_start = 0, window_end = 0, drain_end = 0;
  bool window_started = false;
  uint64_t next_seq = 0;
  uint64_t window_sent = 0;
  uint64_t window_arrivals = 0;
  uint64_t run_dropped_bytes = 0;
  uint64_t run_error_stanzas = 0;
  std::string first_error_stanza;
  double machine_busy0 = 0;
  int64_t max_lag_ns = 0;
  int connections_lost = 0;
  std::vector<int64_t> latencies;
  std::vector<int64_t> receipt_rtts;
  double cpu_server0 = -1, cpu_self0 = 0;
  int64_t wall0 = 0;
  RatePoint point;
};

XmppDriver::XmppDriver(DriverOptions options) : options_(std::move(options)), impl_(std::make_unique<Impl>(options_)) {}

XmppDriver::~XmppDriver() { Close(); }

RegisterResult XmppDriver::Register() {
  Impl& m = *impl_;
  m.reg = {};
  std::string error;
  if (!m.Resolve(&error)) {
    m.reg.failed = 2 * options_.pairs;
    m.reg.first_error = error;
    return m.reg;
  }
  m.first_error.clear();
  m.MakeConns();
  const int64_t t0 = MonoNs();
  const bool finished = m.RunSetup(Impl::Phase::kRegister);
  m.reg.seconds = static_cast<double>(MonoNs() - t0) / 1e9;
  if (!finished) {
    const int unfinished = static_cast<int>(m.conns.size()) - m.reg.created - m.reg.existed - m.reg.failed;
    m.reg.failed += unfinished;
    if (m.first_error.empty()) m.first_error = "timed out after " + std::to_string(options_.login_timeout_s) + " s";
  }
  m.reg.first_error = m.first_error;
  for (auto& c : m.conns) m.CloseConn(*c);
  m.io.restart();
  m.io.run();  // every handler of the closed sockets runs before the connections go
  m.conns.clear();
  return m.reg;
}

bool XmppDriver::Login(std::string* error, double* seconds) {
  Impl& m = *impl_;
  if (!m.Resolve(error)) return false;
  m.first_error.clear();
  m.online = 0;
  m.login_failed = 0;
  m.MakeConns();
  const int64_t t0 = MonoNs();
  const bool finished = m.RunSetup(Impl::Phase::kLogin);
  if (seconds != nullptr) *seconds = static_cast<double>(MonoNs() - t0) / 1e9;
  if (!finished || m.online != static_cast<int>(m.conns.size())) {
    *error = std::to_string(m.online) + " of " + std::to_string(m.conns.size()) + " users online" +
             (finished ? "" : " (timed out)") + (m.first_error.empty() ? "" : "; first error: " + m.first_error);
    return false;
  }
  return true;
}

RatePoint XmppDriver::RunRate(double rate) {
  Impl& m = *impl_;
  m.point = {};
  m.point.offered_per_s = rate;
  ++m.run;
  m.ns_per_msg = 1e9 / rate;
  m.next_seq = 0;
  m.window_sent = 0;
  m.window_arrivals = 0;
  m.run_dropped_bytes = 0;
  m.run_error_stanzas = 0;
  m.first_error_stanza.clear();
  m.max_lag_ns = 0;
  m.connections_lost = 0;
  m.latencies.clear();
  m.receipt_rtts.clear();
  m.latencies.reserve(static_cast<size_t>(rate * options_.duration_s * 1.1) + 16);
  m.window_started = false;
  m.run_start = MonoNs() + kStartDelayNs;
  m.window_start = m.run_start + static_cast<int64_t>(options_.warmup_s * 1e9);
  m.window_end = m.window_start + static_cast<int64_t>(options_.duration_s * 1e9);
  m.drain_end = m.window_end + static_cast<int64_t>(options_.drain_s * 1e9);
  m.phase = Impl::Phase::kRun;
  m.io.restart();
  m.tick_timer.expires_after(std::chrono::nanoseconds(kStartDelayNs));
  m.tick_timer.async_wait([&m](const boost::system::error_code& ec) {
    if (!ec) m.Tick();
  });
  m.io.run();
  m.phase = Impl::Phase::kIdle;

  RatePoint& p = m.point;
  const double d = options_.duration_s;
  p.sent = m.window_sent;
  p.delivered = m.latencies.size();
  p.sent_per_s = static_cast<double>(p.sent) / d;
  p.delivered_per_s = static_cast<double>(p.delivered) / d;
  p.arrival_per_s = static_cast<double>(m.window_arrivals) / d;
  p.receipts = m.receipt_rtts.size();
  p.latency = Summarize(m.latencies);
  p.receipt_rtt = Summarize(m.receipt_rtts);
  p.max_send_lag_ms = static_cast<double>(m.max_lag_ns) / 1e6;
  p.dropped_bytes = m.run_dropped_bytes;
  p.error_stanzas = m.run_error_stanzas;
  p.first_error_stanza = m.first_error_stanza;
  p.connections_lost = m.connections_lost;
  return p;
}

void XmppDriver::Close() {
  if (!impl_) return;
  Impl& m = *impl_;
  for (auto& c : m.conns) {
    if (c->state == Impl::State::kOnline) {
      c->state = Impl::State::kDone;
      m.Send(*c, "</stream:stream>");
    }
  }
  m.io.restart();
  m.io.run_for(std::chrono::milliseconds(200));
  for (auto& c : m.conns) m.CloseConn(*c);
  m.io.restart();
  m.io.run();  // every handler of the closed sockets runs before the connections go
  m.conns.clear();
}

}  // namespace parley::xmppbench
