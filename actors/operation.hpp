#pragma once

// Save and load are one protocol: the same collective steps, with a writer
// or a reader. This header names what differs between them, so that the
// rank agent (rank_agent.cpp) and the coordinator (coordinator.cpp) each
// write the sequence once, as DCP's `_DistWrapper.reduce_scatter("plan")`
// followed by `all_reduce("write" | "read")`:
//
//   step   every rank r                         the coordinator C
//   plan   set up the storage (a load reads
//          the metadata first), local plan,
//          storage's prepare_local_plan  ──▶    gather every local plan;
//                                               C's agent: global plan and
//                                               storage's prepare_global_plan
//          finish_plan, split_plan       ◀──    scatter the central plans
//   data   N writers / readers in parallel ─▶   gather every rank's result
//   commit (save only)                          C's agent: storage's finish
//   outcome reply to the caller           ◀──   the metadata, or one
//                                               checkpoint_failure for all
//
// Internal to actors/: not part of the public API.

#include "core/fault.hpp"
#include "messages/protocol.hpp"

#include <memory>
#include <vector>

namespace dcpp::detail {

struct save_op {
  static constexpr op_kind kind = op_kind::save;
  /// The data step's name in failures ("plan", "write", "commit").
  static constexpr const char* data_step = "write";
  static constexpr fault::step data_fault = fault::step::write;

  using job = save_job;
  using plan = save_plan;
  /// What the planner's global step returns.
  using global_plan = global_save_plan;
  using io_actor = writer_actor;
  using data_atom = write_atom;
  /// What one writer of the data step returns.
  using part_result = std::vector<write_result>;

  using local_msg = local_save_plan_msg;
  using global_msg = global_save_step_msg;
  using global_done_msg = global_save_step_done_msg;
  using central_msg = central_save_plan_msg;
  using data_done_msg = write_done_msg;

  static std::vector<plan>& plans_of(global_plan& x) {
    return x.plans;
  }
  static global_plan& global_of(global_done_msg& x) {
    return x.global;
  }
  static data_done_msg data_done(envelope hdr, std::vector<write_result> res,
                                 caf::error err, rank_report report) {
    return {hdr, std::move(res), std::move(err), report};
  }
  static std::vector<write_result>& results_of(data_done_msg& x) {
    return x.results;
  }
  static std::shared_ptr<const item_source>& data_of(job& x) {
    return x.source;
  }
};

struct load_op {
  static constexpr op_kind kind = op_kind::load;
  static constexpr const char* data_step = "read";
  static constexpr fault::step data_fault = fault::step::read;

  using job = load_job;
  using plan = load_plan;
  using global_plan = std::vector<load_plan>;
  using io_actor = reader_actor;
  using data_atom = read_atom;
  using part_result = caf::ok_atom;

  using local_msg = local_load_plan_msg;
  using global_msg = global_load_step_msg;
  using global_done_msg = global_load_step_done_msg;
  using central_msg = central_load_plan_msg;
  using data_done_msg = read_done_msg;

  static std::vector<plan>& plans_of(global_plan& x) {
    return x;
  }
  static global_plan& global_of(global_done_msg& x) {
    return x.plans;
  }
  static data_done_msg data_done(envelope hdr, std::vector<write_result>,
                                 caf::error err, rank_report report) {
    return {hdr, std::move(err), report};
  }
  static std::vector<write_result> results_of(data_done_msg&) {
    return {};
  }
  static std::shared_ptr<load_target>& data_of(job& x) {
    return x.target;
  }
};

template <class Op>
inline constexpr bool is_save = Op::kind == op_kind::save;

} // namespace dcpp::detail
