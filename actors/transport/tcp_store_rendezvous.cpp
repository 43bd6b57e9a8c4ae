#include "actors/transport/tcp_store_rendezvous.hpp"

#include "core/error.hpp"
#include "core/printable.hpp"

#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <exception>
#include <vector>

namespace dcpp {

namespace {

class tcp_store_directory final : public endpoint_directory {
public:
  tcp_store_directory(std::unique_ptr<c10d::TCPStore> store, std::string name)
    : store_(std::move(store)), name_(std::move(name)) {
    // nop
  }

  caf::error publish(const std::string& key,
                     const std::string& value) override {
    try {
      store_->set(key, std::vector<uint8_t>(value.begin(), value.end()));
      return caf::none;
    } catch (const std::exception& e) {
      return make_error(errc::io_error,
                        name_ + ": set '" + printable(key)
                          + "' failed: " + first_line(e.what()));
    }
  }

  caf::expected<std::string>
  lookup(const std::string& key, std::chrono::milliseconds timeout) override {
    try {
      store_->wait({key}, timeout);
    } catch (const std::exception& e) {
      return make_error(errc::timeout,
                        "not set within " + std::to_string(timeout.count())
                          + " ms (is the coordinator's rank running "
                            "dcpp?): "
                          + first_line(e.what()));
    }
    try {
      // Anyone who reaches the store may have written the value: bounded
      // here, and quoted only through printable() by whoever reports it.
      auto value = store_->get(key);
      if (value.size() > max_value_bytes)
        return make_error(errc::too_large,
                          "the value is " + std::to_string(value.size())
                            + " bytes, not an endpoint (at most "
                            + std::to_string(max_value_bytes) + ")");
      return std::string(value.begin(), value.end());
    } catch (const std::exception& e) {
      return make_error(errc::io_error,
                        name_ + ": get '" + printable(key)
                          + "' failed: " + first_line(e.what()));
    }
  }

  std::string name() const override {
    return name_;
  }

private:
  /// c10::Error's what() carries a backtrace after the first line.
  static std::string first_line(const char* what) {
    std::string_view s{what};
    return printable(s.substr(0, s.find('\n')));
  }

  std::unique_ptr<c10d::TCPStore> store_;
  std::string name_;
};

} // namespace

caf::expected<std::shared_ptr<endpoint_directory>>
make_tcp_store_directory(const std::string& host, uint16_t port,
                         std::chrono::milliseconds timeout) {
  auto name = "torchrun's store at " + printable(host) + ":"
              + std::to_string(port);
  c10d::TCPStoreOptions opts;
  opts.port = port;
  opts.isServer = false;
  opts.waitWorkers = false;
  opts.timeout = timeout;
  try {
    auto store = std::make_unique<c10d::TCPStore>(host, opts);
    return std::shared_ptr<endpoint_directory>{
      std::make_shared<tcp_store_directory>(std::move(store), name)};
  } catch (const std::exception& e) {
    std::string_view what = e.what();
    return make_error(errc::io_error,
                      "cannot connect to " + name + ": "
                        + printable(what.substr(0, what.find('\n'))));
  }
}

caf::expected<std::shared_ptr<endpoint_directory>>
launcher_directory(const launch_env& env, std::chrono::milliseconds timeout) {
  if (!env.agent_store)
    return std::shared_ptr<endpoint_directory>{};
  return make_tcp_store_directory(env.master_addr, env.master_port, timeout);
}

} // namespace dcpp
