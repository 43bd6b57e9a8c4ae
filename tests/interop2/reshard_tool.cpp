// One rank of a dcpp job that loads any DCP checkpoint without knowing its
// keys, in its own sharding, and saves what it loaded as a new checkpoint
// (tests/interop2/torch2_test.py compares that one with what PyTorch saved):
//
//   dcpp-launch --nproc N -- reshard_tool IN OUT [--dim D]
//
// Every tensor of IN's .metadata is split into N contiguous, possibly
// uneven, blocks along dim D (the last dim of tensors with fewer dims; 0-d
// tensors whole on every rank); rank r loads block r ([len*r/N,
// len*(r+1)/N), possibly empty) and saves it as its shard. Bytes values are
// loaded and saved as they are. The keys stay IN's flattened keys. Exit 0
// when both the load and the save succeed.

#include "actors/checkpointer.hpp"
#include "actors/system.hpp"
#include "actors/transport/launch_env.hpp"
#include "actors/transport/tcp_store_rendezvous.hpp"
#include "actors/transport/zmq_transport.hpp"
#include "core/error.hpp"
#include "storage/filesystem.hpp"
#include "storage/state_dict.hpp"

#include <caf/actor_system.hpp>

#include <ATen/ATen.h>

#include <cstdio>
#include <cstdlib>
#include <string>

using namespace dcpp;

namespace {

int fail(int32_t rank, const std::string& what, const caf::error& err) {
  std::fprintf(stderr, "reshard_tool: rank %d: %s: %s\n", rank, what.c_str(),
               describe(err).c_str());
  return 1;
}

/// This rank's block of every item of `md` (zeros), bytes placeholders.
state_dict make_target(const metadata& md, int64_t dim, int32_t rank,
                       int32_t world) {
  state_dict sd;
  for (const auto& [key, item] : md.state_dict_metadata) {
    if (item.kind != item_kind::tensor) {
      sd.set(key, bytes_value{});
      continue;
    }
    const auto& size = item.tensor.size;
    auto options = at::TensorOptions{}.dtype(
      to_scalar_type(item.tensor.properties.type));
    if (size.empty() || world == 1) {
      sd.set(key, at::zeros(size, options));
      continue;
    }
    auto d = static_cast<size_t>(
      std::min<int64_t>(dim, static_cast<int64_t>(size.size()) - 1));
    auto len = size[d];
    auto begin = len * rank / world;
    auto end = len * (rank + 1) / world;
    sharded_tensor st;
    st.global_size = size;
    if (end > begin) {
      auto local = size;
      local[d] = end - begin;
      shape_t offsets(size.size(), 0);
      offsets[d] = begin;
      st.local_shards.push_back({at::zeros(local, options), offsets});
    }
    sd.set(key, std::move(st));
  }
  return sd;
}

} // namespace

int main(int argc, char** argv) {
  if (argc != 3 && !(argc == 5 && std::string{argv[3]} == "--dim")) {
    std::fprintf(stderr, "usage: reshard_tool IN OUT [--dim D]\n");
    return 2;
  }
  std::string in = argv[1];
  std::string out = argv[2];
  int64_t dim = argc == 5 ? std::atoll(argv[4]) : 0;
  auto env = read_launch_env();
  if (!env) {
    std::fprintf(stderr, "reshard_tool: %s\n", describe(env.error()).c_str());
    return 2;
  }
  const auto rank = env->rank;
  auto md = make_filesystem_reader(in)->read_metadata();
  if (!md)
    return fail(rank, "read_metadata of " + in, md.error());

  system_options sopts;
  sopts.scheduler_threads = 2;
  system_config cfg{sopts};
  caf::actor_system sys{cfg};
  int rc = 0;
  {
    zmq_options zopts;
    auto directory = launcher_directory(*env);
    if (!directory)
      return fail(rank, "connect", directory.error());
    zopts.directory = *directory;
    auto group = make_zmq_process_group(sys, *env, zopts);
    if (!group)
      return fail(rank, "connect", group.error());
    checkpointer_options copts;
    copts.process_group = *group;
    copts.step_timeout = std::chrono::seconds(120);
    checkpointer cp{make_filesystem_writer(out), make_filesystem_reader(in),
                    copts};
    auto sd = make_target(*md, dim, rank, env->world_size);
    if (auto err = cp.load(sd)) {
      rc = fail(rank, "load of " + in, err);
    } else if (auto saved = cp.save(sd); !saved) {
      rc = fail(rank, "save to " + out, saved.error());
    } else {
      std::printf("rank %d/%d: loaded %zu items of %s, saved to %s\n", rank,
                  env->world_size, sd.size(), in.c_str(), out.c_str());
      std::fflush(stdout);
    }
  } // the checkpointer and the group go before the actor system
  return rc;
}
