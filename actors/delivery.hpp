#pragma once

// Every message between a rank agent and a coordinator goes through
// `deliver`, where the message rules of the fault layer (core/fault.hpp,
// `msg:drop` and `msg:delay`) can lose it or make it late. Without rules it
// is a plain send.

#include "core/fault.hpp"

#include <chrono>
#include <cstdint>
#include <utility>

namespace dcpp {

/// Sends `msg` from `self` to `dest`: a message between rank `rank` and
/// the coordinator, in the direction `to_coordinator` says, at least
/// `late` late (an injected slow step).
template <class Self, class Dest, class Msg>
void deliver(Self self, const Dest& dest, int32_t rank, bool to_coordinator,
             Msg&& msg,
             std::chrono::milliseconds late = std::chrono::milliseconds{0}) {
  auto fate = fault::on_message(rank, to_coordinator);
  if (fate.drop)
    return;
  auto delay = fate.delay + late;
  if (delay.count() > 0) {
    self->delayed_send(dest, delay, std::forward<Msg>(msg));
    return;
  }
  self->send(dest, std::forward<Msg>(msg));
}

} // namespace dcpp
