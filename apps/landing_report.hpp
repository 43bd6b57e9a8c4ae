#pragma once

// The landing path a program's loads or saves took (storage/landing.hpp),
// for the JSON reports of dcpp-worker and dcpp_bench: the benchmark shows
// it beside each row.

#include "storage/landing.hpp"

#include <nlohmann/json.hpp>

namespace dcpp::cli {

/// {"mode": "direct"|"bounce", "source": why, "direct_GBps", "bounce_GBps"
/// (the probe's figures, if it ran)} for reads or (`write`) writes made
/// with option `opt`.
inline nlohmann::json landing_json(landing_mode opt, bool write) {
  if (opt != landing_mode::automatic)
    return {{"mode", to_string(opt)}, {"source", "option"}};
  const auto& host = write ? detail::write_landing_of_host()
                           : detail::read_landing_of_host();
  return {{"mode", to_string(host.mode)},
          {"source", host.source},
          {"direct_GBps", host.direct_GBps},
          {"bounce_GBps", host.bounce_GBps}};
}

} // namespace dcpp::cli
