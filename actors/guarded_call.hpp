#pragma once

// How the planner, writer and reader actors call what they wrap (a planner
// or a storage backend, user code that may throw): one function, so that
// every handler has the same rules.
//   - a missing object fails with errc::invalid_argument, naming its role;
//   - an exception becomes an error of code `thrown_code` naming the call
//     (exceptions never cross an actor boundary);
//   - a `caf::error` result becomes `ok_atom` or the error, a
//     `caf::expected<T>` its value or its error.
// Internal to actors/.

#include "core/error.hpp"

#include <caf/atom.hpp>
#include <caf/expected.hpp>
#include <caf/result.hpp>

#include <exception>
#include <string>
#include <type_traits>
#include <utility>

namespace dcpp::detail {

template <class T>
struct is_expected : std::false_type {};

template <class T>
struct is_expected<caf::expected<T>> : std::true_type {};

/// Calls `f(*obj)` for a handler that returns `caf::result<R>`; `role` names
/// `obj` ("storage writer"), `what` the call ("write_data").
template <class R, class Ptr, class F>
caf::result<R> guarded_call(const Ptr& obj, const char* role, const char* what,
                            errc thrown_code, F&& f) {
  if (!obj)
    return make_error(errc::invalid_argument, std::string{"no "} + role);
  try {
    auto res = f(*obj);
    using res_type = decltype(res);
    if constexpr (std::is_same_v<res_type, caf::error>) {
      if (res)
        return res;
      return caf::ok_atom::value;
    } else if constexpr (is_expected<res_type>::value) {
      if (!res)
        return std::move(res.error());
      return std::move(*res);
    } else {
      return R{std::move(res)};
    }
  } catch (const std::exception& ex) {
    return make_error(thrown_code, std::string{what} + " threw: " + ex.what());
  }
}

} // namespace dcpp::detail
