#include "actors/system.hpp"

#include "core/error.hpp"
#include "messages/protocol.hpp"

#include <caf/all.hpp>

#include <string>

namespace dcpp {

void configure(caf::actor_system_config& cfg, const system_options& opts) {
  cfg.add_error_category(error_category,
                         [](uint8_t code, caf::atom_value,
                            const caf::message& ctx) -> std::string {
                           auto err = ctx.empty()
                                        ? caf::error{code, error_category}
                                        : caf::error{code, error_category, ctx};
                           return describe(err);
                         });
  cfg.add_message_types<caf::id_block::dcpp>();
  if (opts.scheduler_threads > 0)
    cfg.set("scheduler.max-threads", opts.scheduler_threads);
  if (opts.deterministic)
    cfg.set("scheduler.policy", caf::atom("testing"));
}

system_config::system_config(const system_options& opts) {
  configure(*this, opts);
}

} // namespace dcpp
