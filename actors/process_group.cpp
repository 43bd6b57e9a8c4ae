#include "actors/process_group.hpp"

#include "actors/coordinator.hpp"
#include "actors/rank_agent.hpp"

#include <caf/all.hpp>

#include <utility>

namespace dcpp {

process_group::~process_group() {
  // nop
}

namespace {

/// Owns the actors of one local group; stops them when the last member
/// goes away.
struct local_group_core {
  caf::actor_system* sys = nullptr;
  peer_table_ptr peers;
  std::vector<rank_agent_actor> agents;

  ~local_group_core() {
    for (auto& a : agents)
      caf::anon_send_exit(a, caf::exit_reason::user_shutdown);
    for (auto& c : peers->coordinators)
      caf::anon_send_exit(c, caf::exit_reason::user_shutdown);
  }
};

class local_process_group final : public process_group {
public:
  local_process_group(std::shared_ptr<local_group_core> core, int32_t rank)
    : core_(std::move(core)), rank_(rank) {
    // nop
  }

  int32_t rank() const override {
    return rank_;
  }

  int32_t world_size() const override {
    return core_->peers->world_size();
  }

  caf::actor_system& system() const override {
    return *core_->sys;
  }

  rank_agent_actor agent() const override {
    return core_->agents[rank_];
  }

  coordinator_actor coordinator() const override {
    return core_->peers->coordinators[rank_];
  }

private:
  std::shared_ptr<local_group_core> core_;
  int32_t rank_;
};

} // namespace

std::vector<process_group_ptr>
make_local_process_group(caf::actor_system& sys, int32_t world_size,
                         process_group_options opts) {
  std::vector<process_group_ptr> result;
  if (world_size < 1)
    return result;
  auto core = std::make_shared<local_group_core>();
  core->sys = &sys;
  core->peers = std::make_shared<peer_table>();
  // Spawn everything first, then fill the table: actors read it only while
  // handling operations, which start after this function returns.
  for (int32_t r = 0; r < world_size; ++r) {
    core->peers->coordinators.push_back(spawn_coordinator(sys, r, core->peers));
    core->agents.push_back(spawn_rank_agent(sys, r, core->peers, opts.agent));
  }
  for (auto& a : core->agents)
    core->peers->ranks.push_back(a);
  for (int32_t r = 0; r < world_size; ++r)
    result.push_back(std::make_shared<local_process_group>(core, r));
  return result;
}

} // namespace dcpp
