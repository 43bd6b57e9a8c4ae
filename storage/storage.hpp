#pragma once

// The storage layer's interfaces (DCP's `storage.py`): a `storage_writer`
// and a `storage_reader`, synchronous and blocking. They are called from
// detached actors or from the caller's thread, never from a scheduler
// thread. Each rank owns its own writer / reader instance.

#include "core/plan.hpp"

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace at {
class Tensor;
} // namespace at

namespace dcpp {

/// Where a writer gets the data of a write item (DCP's
/// `SavePlanner.resolve_data`). Must be safe to call from several threads.
class item_source {
public:
  virtual ~item_source();

  /// The tensor for a tensor or shard item: the whole local tensor or shard
  /// covering `item.tensor_data.chunk` (on the CPU).
  [[nodiscard]] virtual caf::expected<at::Tensor>
  tensor(const write_item& item) const = 0;

  /// The serialized bytes of a bytes item. The view stays valid for the
  /// duration of the save.
  [[nodiscard]] virtual caf::expected<std::string_view>
  bytes(const write_item& item) const = 0;
};

/// Where a reader puts what it reads (DCP's `LoadPlanner.resolve_tensor`,
/// `load_bytes`). Must be safe to call from several threads.
class load_target {
public:
  virtual ~load_target();

  /// The destination of a tensor read item: the local tensor or shard named
  /// by `item.dest_index`, already narrowed to `dest_offsets`/`lengths`.
  [[nodiscard]] virtual caf::expected<at::Tensor>
  tensor(const read_item& item) = 0;

  /// Stores the bytes of a bytes read item.
  [[nodiscard]] virtual caf::error
  set_bytes(const read_item& item, std::string data)
    = 0;
};

/// Writes a checkpoint. Call order (DCP's StorageWriter):
/// 1. every rank:      `set_up(is_coordinator, rank)`
/// 2. every rank:      `prepare_local_plan(local plan)`
/// 3. coordinator:     `prepare_global_plan(all local plans)` (assigns each
///                     rank its storage prefix in `storage_data`)
/// 4. every rank:      `write_data(central plan, source)` -> results
/// 5. coordinator:     `finish(metadata, every rank's results)` — the
///                     commit; only after every rank's step 4 succeeded.
/// On any failure every rank may call `abort()` to drop what it wrote.
/// Before step 1, `reset(checkpoint_id)` may point the writer at another
/// checkpoint (`checkpointer::save(sd, id)`; DCP's `reset`).
class storage_writer {
public:
  virtual ~storage_writer();

  /// Makes the next save write the checkpoint `checkpoint_id` (for the
  /// file system: its directory). Never called while a save runs. The
  /// default fails with `errc::unsupported`.
  [[nodiscard]] virtual caf::error reset(const std::string& checkpoint_id);

  [[nodiscard]] virtual caf::error set_up(bool is_coordinator, int32_t rank)
    = 0;

  [[nodiscard]] virtual caf::expected<save_plan>
  prepare_local_plan(save_plan plan) = 0;

  [[nodiscard]] virtual caf::expected<std::vector<save_plan>>
  prepare_global_plan(std::vector<save_plan> plans) = 0;

  [[nodiscard]] virtual caf::expected<std::vector<write_result>>
  write_data(const save_plan& plan, const item_source& source) = 0;

  /// Splits a central plan (after step 3) into at most `n` parts that may be
  /// passed to concurrent `write_data` calls from different threads (the
  /// writer actors). The default returns the plan as its only part.
  [[nodiscard]] virtual std::vector<save_plan> split_plan(const save_plan& plan,
                                                          size_t n);

  [[nodiscard]] virtual caf::error
  finish(const metadata& md,
         const std::vector<std::vector<write_result>>& results)
    = 0;

  /// Best effort: remove the data this rank wrote for the current save.
  virtual void abort();
};

/// Reads a checkpoint. Call order (DCP's StorageReader):
/// 1. every rank:      `read_metadata()`
/// 2. every rank:      `set_up(metadata, is_coordinator, rank)`
/// 3. every rank:      `prepare_local_plan(local plan)`
/// 4. coordinator:     `prepare_global_plan(all local plans)`
/// 5. every rank:      `read_data(central plan, target)`
/// Before step 1, `reset(checkpoint_id)` may point the reader at another
/// checkpoint (`checkpointer::load(sd, id)`; DCP's `reset`).
class storage_reader {
public:
  virtual ~storage_reader();

  /// Makes the next load read the checkpoint `checkpoint_id` (for the file
  /// system: its directory). The default fails with `errc::unsupported`.
  [[nodiscard]] virtual caf::error reset(const std::string& checkpoint_id);

  [[nodiscard]] virtual caf::expected<metadata> read_metadata() = 0;

  [[nodiscard]] virtual caf::error
  set_up(const metadata& md, bool is_coordinator, int32_t rank)
    = 0;

  /// Steps 1 and 2 as the rank agent calls them: the metadata as one
  /// read-only object, which every rank of a process that reads the same
  /// checkpoint may share. A backend that can hand its ranks the same object
  /// (the memory store) overrides both; the defaults wrap `read_metadata`
  /// and call `set_up(*md, ...)`.
  [[nodiscard]] virtual caf::expected<metadata_ptr> read_shared_metadata();
  [[nodiscard]] virtual caf::error
  set_up_shared(const metadata_ptr& md, bool is_coordinator, int32_t rank);

  [[nodiscard]] virtual caf::expected<load_plan>
  prepare_local_plan(load_plan plan);

  [[nodiscard]] virtual caf::expected<std::vector<load_plan>>
  prepare_global_plan(std::vector<load_plan> plans);

  [[nodiscard]] virtual caf::error
  read_data(const load_plan& plan, load_target& target)
    = 0;

  /// Splits a central plan into at most `n` parts that may be passed to
  /// concurrent `read_data` calls (the reader actors). Default: one part.
  [[nodiscard]] virtual std::vector<load_plan> split_plan(const load_plan& plan,
                                                          size_t n);
};

using storage_writer_ptr = std::shared_ptr<storage_writer>;
using storage_reader_ptr = std::shared_ptr<storage_reader>;

} // namespace dcpp
