#include "actors/transport/endpoint.hpp"

#include "core/error.hpp"
#include "core/printable.hpp"

#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstdlib>
#include <memory>

namespace dcpp {

endpoint_directory::~endpoint_directory() = default;

namespace {

bool is_wildcard(const std::string& host) {
  return host == "*" || host == "0.0.0.0" || host == "::" || host == "[::]";
}

std::string unbracket(const std::string& host) {
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']')
    return host.substr(1, host.size() - 2);
  return host;
}

} // namespace

caf::expected<resolved_host> resolve_host(const std::string& host_in) {
  auto host = unbracket(host_in);
  if (host.empty())
    return make_error(errc::invalid_argument, "an empty host name");
  if (is_wildcard(host_in))
    return resolved_host{"*", host == "::"};
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  int rc = ::getaddrinfo(host.c_str(), nullptr, &hints, &res);
  if (rc != 0)
    return make_error(errc::invalid_argument, "cannot resolve host '"
                                                + printable(host_in)
                                                + "': " + ::gai_strerror(rc));
  std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> guard{res,
                                                             ::freeaddrinfo};
  const addrinfo* pick = nullptr;
  for (auto* ai = res; ai != nullptr; ai = ai->ai_next)
    if (ai->ai_family == AF_INET) {
      pick = ai;
      break;
    }
  for (auto* ai = res; ai != nullptr && pick == nullptr; ai = ai->ai_next)
    if (ai->ai_family == AF_INET6)
      pick = ai;
  if (pick == nullptr)
    return make_error(errc::invalid_argument,
                      "host '" + printable(host_in)
                        + "' has no IPv4 or IPv6 address");
  char buf[INET6_ADDRSTRLEN] = {};
  const void* src = nullptr;
  if (pick->ai_family == AF_INET)
    src = &reinterpret_cast<const sockaddr_in*>(pick->ai_addr)->sin_addr;
  else
    src = &reinterpret_cast<const sockaddr_in6*>(pick->ai_addr)->sin6_addr;
  if (::inet_ntop(pick->ai_family, src, buf, sizeof buf) == nullptr)
    return make_error(errc::invalid_argument,
                      "host '" + printable(host_in) + "': inet_ntop failed");
  return resolved_host{buf, pick->ai_family == AF_INET6};
}

std::string tcp_endpoint(const resolved_host& host, uint16_t port) {
  auto port_str = port == 0 ? std::string{"*"} : std::to_string(port);
  if (host.ipv6 && host.address != "*")
    return "tcp://[" + host.address + "]:" + port_str;
  return "tcp://" + host.address + ":" + port_str;
}

caf::expected<host_port> parse_tcp_endpoint(const std::string& endpoint) {
  auto bad = [&](const char* why) {
    return make_error(errc::invalid_argument,
                      "'" + printable(endpoint)
                        + "' is not a tcp://HOST:PORT endpoint (" + why + ")");
  };
  const std::string scheme = "tcp://";
  if (endpoint.compare(0, scheme.size(), scheme) != 0)
    return bad("no tcp:// prefix");
  auto rest = endpoint.substr(scheme.size());
  auto colon = rest.rfind(':');
  if (colon == std::string::npos || colon == 0)
    return bad("no port");
  auto host = rest.substr(0, colon);
  auto port_str = rest.substr(colon + 1);
  if (port_str.empty() || port_str.size() > 5
      || port_str.find_first_not_of("0123456789") != std::string::npos)
    return bad("the port is not a number");
  auto port = std::atoi(port_str.c_str());
  if (port < 1 || port > 65535)
    return bad("the port is out of range");
  host = unbracket(host);
  // A host name or literal is printable ASCII (IDNs travel as punycode).
  auto odd = [](char c) {
    auto u = static_cast<unsigned char>(c);
    return u <= ' ' || u >= 0x7F || c == '/' || c == '[' || c == ']';
  };
  if (host.empty() || std::any_of(host.begin(), host.end(), odd))
    return bad("bad host");
  return host_port{host, static_cast<uint16_t>(port)};
}

} // namespace dcpp
