#pragma once

// Every atom and every message type of dcpp in one type ID block.
//
// Type IDs are only needed when messages cross a process boundary through
// CAF itself (caf_io) or for portable type names; dcpp's own transport uses
// the cereal encoding (`messages/wire.hpp`). The block starts at
// `caf::first_custom_type_id + 1000` so that an application that embeds dcpp
// may keep its own block at `caf::first_custom_type_id`.

#include <caf/atom.hpp>
#include <caf/type_id.hpp>

#include <vector>

namespace dcpp {

// core/ types (defined in core/metadata.hpp, core/plan.hpp, core/planner.hpp)
struct metadata;
struct save_plan;
struct load_plan;
struct write_result;
struct global_save_plan;
// core/error.hpp
struct checkpoint_failure;

// wire messages (defined in messages/messages.hpp)
struct op_id;
struct envelope;
struct local_save_plan_msg;
struct global_save_step_msg;
struct global_save_step_done_msg;
struct central_save_plan_msg;
struct write_done_msg;
struct commit_msg;
struct commit_done_msg;
struct local_load_plan_msg;
struct global_load_step_msg;
struct global_load_step_done_msg;
struct central_load_plan_msg;
struct read_done_msg;
struct op_outcome_msg;
struct coordinator_stats;
struct agent_stats;

} // namespace dcpp

CAF_BEGIN_TYPE_ID_BLOCK(dcpp, caf::first_custom_type_id + 1000)

  // -- data model ------------------------------------------------------------
  CAF_ADD_TYPE_ID(dcpp, (dcpp::metadata))
  CAF_ADD_TYPE_ID(dcpp, (dcpp::save_plan))
  CAF_ADD_TYPE_ID(dcpp, (dcpp::load_plan))
  CAF_ADD_TYPE_ID(dcpp, (dcpp::write_result))
  CAF_ADD_TYPE_ID(dcpp, (dcpp::global_save_plan))
  CAF_ADD_TYPE_ID(dcpp, (dcpp::checkpoint_failure))

  // -- wire messages (coordinator <-> rank) ----------------------------------
  CAF_ADD_TYPE_ID(dcpp, (dcpp::op_id))
  CAF_ADD_TYPE_ID(dcpp, (dcpp::envelope))
  CAF_ADD_TYPE_ID(dcpp, (dcpp::local_save_plan_msg))
  CAF_ADD_TYPE_ID(dcpp, (dcpp::global_save_step_msg))
  CAF_ADD_TYPE_ID(dcpp, (dcpp::global_save_step_done_msg))
  CAF_ADD_TYPE_ID(dcpp, (dcpp::central_save_plan_msg))
  CAF_ADD_TYPE_ID(dcpp, (dcpp::write_done_msg))
  CAF_ADD_TYPE_ID(dcpp, (dcpp::commit_msg))
  CAF_ADD_TYPE_ID(dcpp, (dcpp::commit_done_msg))
  CAF_ADD_TYPE_ID(dcpp, (dcpp::local_load_plan_msg))
  CAF_ADD_TYPE_ID(dcpp, (dcpp::global_load_step_msg))
  CAF_ADD_TYPE_ID(dcpp, (dcpp::global_load_step_done_msg))
  CAF_ADD_TYPE_ID(dcpp, (dcpp::central_load_plan_msg))
  CAF_ADD_TYPE_ID(dcpp, (dcpp::read_done_msg))
  CAF_ADD_TYPE_ID(dcpp, (dcpp::op_outcome_msg))
  CAF_ADD_TYPE_ID(dcpp, (dcpp::coordinator_stats))
  CAF_ADD_TYPE_ID(dcpp, (dcpp::agent_stats))

  // -- atoms (0.17.6: atoms take no type ID; listed here to keep one list) ---
  // local API of a rank agent
  CAF_ADD_ATOM(dcpp, dcpp, save_atom, "save")
  CAF_ADD_ATOM(dcpp, dcpp, load_atom, "load")
  // planner actor
  CAF_ADD_ATOM(dcpp, dcpp, local_plan_atom, "local_plan")
  CAF_ADD_ATOM(dcpp, dcpp, global_plan_atom, "glob_plan")
  CAF_ADD_ATOM(dcpp, dcpp, finish_plan_atom, "fin_plan")
  // writer / reader actors
  CAF_ADD_ATOM(dcpp, dcpp, set_up_atom, "set_up")
  CAF_ADD_ATOM(dcpp, dcpp, prepare_local_atom, "prep_local")
  CAF_ADD_ATOM(dcpp, dcpp, prepare_global_atom, "prep_glob")
  CAF_ADD_ATOM(dcpp, dcpp, split_atom, "split")
  CAF_ADD_ATOM(dcpp, dcpp, write_atom, "write")
  CAF_ADD_ATOM(dcpp, dcpp, read_atom, "read")
  CAF_ADD_ATOM(dcpp, dcpp, read_metadata_atom, "read_md")
  CAF_ADD_ATOM(dcpp, dcpp, finish_atom, "finish")
  CAF_ADD_ATOM(dcpp, dcpp, abort_atom, "abort")
  // timers and introspection
  CAF_ADD_ATOM(dcpp, dcpp, deadline_atom, "deadline")
  CAF_ADD_ATOM(dcpp, dcpp, stats_atom, "stats")
  CAF_ADD_ATOM(dcpp, dcpp, progress_atom, "progress")

CAF_END_TYPE_ID_BLOCK(dcpp)
