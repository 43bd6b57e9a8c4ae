// The job's secret from hostile or careless places: a DCPP_SECRET_FILE that
// is a FIFO, a device, a huge file or in a directory others may write is
// refused at once, naming it, without reading it; ranks of two jobs that
// share a secret hold different keys; a guessable secret is called so.

#include "actors/system.hpp"
#include "actors/transport/curve_keys.hpp"
#include "actors/transport/launch_env.hpp"
#include "actors/transport/zmq_transport.hpp"
#include "core/error.hpp"
#include "tests/support/free_port.hpp"

#include <caf/actor_system.hpp>

#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <string>
#include <thread>

using namespace dcpp;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

using clock_type = std::chrono::steady_clock;

caf::expected<launch_env> read_secret_file(const std::string& path) {
  return read_launch_env([path](const char* name) -> const char* {
    return std::string{name} == "DCPP_SECRET_FILE" ? path.c_str() : nullptr;
  });
}

/// A private directory of the test, removed at the end.
struct scratch {
  fs::path dir = fs::temp_directory_path()
                 / ("dcpp-secret-test-" + std::to_string(::getpid()));
  scratch() {
    fs::remove_all(dir);
    fs::create_directories(dir);
    ::chmod(dir.c_str(), 0700);
  }
  ~scratch() {
    fs::remove_all(dir);
  }
  /// A private file holding `text`.
  std::string file(const std::string& name, const std::string& text,
                   const fs::path& in = {}) {
    auto path = ((in.empty() ? dir : in) / name).string();
    std::ofstream{path, std::ios::binary} << text;
    ::chmod(path.c_str(), 0600);
    return path;
  }
};

/// The peak resident memory of this process (VmHWM), in KiB.
long peak_rss_kib() {
  std::ifstream status{"/proc/self/status"};
  std::string line;
  while (std::getline(status, line))
    if (line.rfind("VmHWM:", 0) == 0)
      return std::stol(line.substr(6));
  return -1;
}

std::string message(const caf::expected<launch_env>& env) {
  REQUIRE(!env);
  return describe(env.error());
}

} // namespace

TEST_CASE("a FIFO as the secret file is refused at once, naming it",
          "[secret]") {
  scratch s;
  auto fifo = (s.dir / "secret.fifo").string();
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  // In a thread: should the read block (no writer ever comes), the test
  // fails after a second instead of hanging, and then releases it.
  auto start = clock_type::now();
  std::promise<caf::expected<launch_env>> done;
  auto result = done.get_future();
  std::thread reader{[&] { done.set_value(read_secret_file(fifo)); }};
  bool in_time = result.wait_for(1s) == std::future_status::ready;
  if (!in_time) {
    int w = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK);
    if (w >= 0)
      ::close(w);
  }
  reader.join();
  CHECK(in_time);
  auto env = result.get();
  auto why = message(env);
  CHECK(clock_type::now() - start < 1s);
  CHECK(code_of(env.error()) == errc::invalid_argument);
  CHECK(why.find("DCPP_SECRET_FILE=" + fifo) != std::string::npos);
  CHECK(why.find("is a FIFO, not a regular file") != std::string::npos);
}

TEST_CASE("a device or a directory as the secret file is refused", "[secret]") {
  scratch s;
  auto zero = message(read_secret_file("/dev/zero"));
  CHECK(zero.find("DCPP_SECRET_FILE=/dev/zero: is a character device")
        != std::string::npos);
  auto dir = message(read_secret_file(s.dir.string()));
  CHECK(dir.find(s.dir.string() + ": is a directory") != std::string::npos);
}

TEST_CASE("a huge secret file is refused unread, naming its size", "[secret]") {
  scratch s;
  auto path = s.file("huge", "");
  // 1 GiB, sparse: holes read as zeros, and nothing is on disk.
  REQUIRE(::truncate(path.c_str(), off_t{1} << 30) == 0);
  auto rss_before = peak_rss_kib();
  auto start = clock_type::now();
  auto env = read_secret_file(path);
  auto took = clock_type::now() - start;
  auto why = message(env);
  CHECK(why.find(path
                 + ": is 1073741824 bytes; a secret file holds one "
                   "line of at most 4096 bytes")
        != std::string::npos);
  CHECK(took < 1s);
  // Not read: the peak resident memory did not grow by the file (nor by
  // a tenth of it).
  CHECK(peak_rss_kib() - rss_before < 100 * 1024);
  SECTION("4096 bytes are still a secret file") {
    auto ok = s.file("ok",
                     std::string(40, 'k') + "\n" + std::string(4096 - 41, '#'));
    auto fine = read_secret_file(ok);
    REQUIRE(fine);
    CHECK(fine->secret == std::string(40, 'k'));
    CHECK(fine->secret_source == "DCPP_SECRET_FILE=" + ok);
    auto over = s.file("over", std::string(4097, 'k'));
    CHECK(message(read_secret_file(over)).find("is 4097 bytes")
          != std::string::npos);
  }
}

TEST_CASE("a secret file in a directory others may write is refused",
          "[secret]") {
  scratch s;
  auto shared = s.dir / "shared";
  fs::create_directories(shared);
  auto path = s.file("secret", "a-secret-of-the-job-0123456789abcdef\n",
                     shared);
  for (mode_t mode : {0777, 0770, 0722}) {
    ::chmod(shared.c_str(), mode);
    auto why = message(read_secret_file(path));
    CHECK(why.find("its directory " + shared.string()
                   + " may be written by group or others")
          != std::string::npos);
  }
  SECTION("reached through a link from a private directory") {
    ::chmod(shared.c_str(), 0777);
    auto link = (s.dir / "link").string();
    REQUIRE(::symlink(path.c_str(), link.c_str()) == 0);
    auto why = message(read_secret_file(link));
    CHECK(why.find("DCPP_SECRET_FILE=" + link + ": its directory "
                   + shared.string())
          != std::string::npos);
  }
  SECTION("a private directory, or one with the sticky bit, is fine") {
    for (mode_t mode : {0700, 0755, 01777}) {
      ::chmod(shared.c_str(), mode);
      auto env = read_secret_file(path);
      REQUIRE(env);
      CHECK(env->secret == "a-secret-of-the-job-0123456789abcdef");
    }
  }
  SECTION("the file's own mode is still checked") {
    ::chmod(shared.c_str(), 0700);
    ::chmod(path.c_str(), 0640);
    CHECK(message(read_secret_file(path)).find("chmod 600")
          != std::string::npos);
  }
  ::chmod(shared.c_str(), 0700);
}

TEST_CASE("two jobs with the same secret hold different keys", "[secret]") {
  auto a = detail::derive_curve_keys("one-secret", "job-a");
  auto a2 = detail::derive_curve_keys("one-secret", "job-a");
  auto b = detail::derive_curve_keys("one-secret", "job-b");
  auto none = detail::derive_curve_keys("one-secret", "");
  REQUIRE(a);
  REQUIRE(a2);
  REQUIRE(b);
  REQUIRE(none);
  CHECK(a->server.public_key == a2->server.public_key);
  CHECK(a->client.secret_key == a2->client.secret_key);
  CHECK(a->server.public_key != b->server.public_key);
  CHECK(a->client.public_key != b->client.public_key);
  CHECK(a->server.public_key != none->server.public_key);
  CHECK(b->server.public_key != none->server.public_key);
  // The job id is salt, not secret material appended to the secret.
  auto shifted = detail::derive_curve_keys("one-secretj", "ob-a");
  REQUIRE(shifted);
  CHECK(shifted->server.public_key != a->server.public_key);
}

TEST_CASE("a rank of another job fails the handshake, naming its job id",
          "[secret]") {
  system_options sopts;
  sopts.scheduler_threads = 2;
  system_config cfg0{sopts};
  system_config cfg1{sopts};
  caf::actor_system sys0{cfg0};
  caf::actor_system sys1{cfg1};
  auto port = test::free_port();
  auto env_of = [&](int32_t rank, const std::string& job) {
    launch_env env;
    env.rank = rank;
    env.world_size = 2;
    env.master_port = port;
    env.secret = "same-secret-for-both-jobs-0123456789";
    env.job_id = job;
    return env;
  };
  zmq_options opts;
  opts.drain_timeout = 2000ms;
  opts.connect_timeout = 10000ms;
  opts.handshake_timeout = 300ms;
  auto hub = make_zmq_process_group(sys0, env_of(0, "job-a"), opts);
  REQUIRE(hub);
  auto start = clock_type::now();
  auto stranger = make_zmq_process_group(sys1, env_of(1, "job-b"), opts);
  REQUIRE(!stranger);
  CHECK(clock_type::now() - start < 5s);
  CHECK(code_of(stranger.error()) == errc::unauthorized);
  auto why = context_of(stranger.error());
  CHECK(why.find("another DCPP_SECRET or another job id (this rank's is "
                 "'job-b'")
        != std::string::npos);
  // The job's own rank still joins.
  auto own = make_zmq_process_group(sys1, env_of(1, "job-a"), opts);
  REQUIRE(own);
  CHECK((*own)->world_size() == 2);
  own->reset();
  hub->reset();
}

TEST_CASE("a guessable secret is called so", "[secret]") {
  for (auto weak : {"s", "abc", "job-id-test-secret", "hunter2hunter2",
                    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                    "abababababababababababababababababababababababab"}) {
    auto why = detail::weak_secret_reason(weak);
    CAPTURE(weak);
    CHECK(!why.empty());
    CHECK(why.find("16 random bytes") != std::string::npos);
  }
  CHECK(detail::weak_secret_reason("s").find("1 bytes, at most 4 bits")
        != std::string::npos);
  // What dcpp-launch draws (16 random bytes in hex), `openssl rand -base64
  // 16`, and a long pass phrase.
  for (auto strong :
       {"3f9a0c1e7b2d4a6f8e0b1c2d3e4f5a6b", "q83vEjRWeJGrze8BI0VniQ==",
        "correct horse battery staple, twice over"}) {
    CAPTURE(strong);
    CHECK(detail::weak_secret_reason(strong).empty());
  }
}
