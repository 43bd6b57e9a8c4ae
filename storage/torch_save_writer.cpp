#include "storage/torch_save_writer.hpp"

#include "core/error.hpp"
#include "storage/posix_file.hpp"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>
#include <torch/csrc/jit/serialization/pickle.h>

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <set>
#include <vector>

namespace dcpp {

namespace {

// -- values -------------------------------------------------------------------

/// The Python object a bytes value holds (int, float, str, or anything
/// libtorch's unpickler decodes: None, bool, tuples, lists, dicts); raw
/// bytes as a uint8 tensor else, with a warning saying how to read them.
c10::IValue decode_bytes(const std::string& key, const bytes_value& b) {
  if (auto i = b.to_int())
    return c10::IValue{*i};
  if (auto d = b.to_double())
    return c10::IValue{*d};
  if (auto s = b.to_string())
    return c10::IValue{*s};
  try {
    return torch::jit::pickle_load(
      std::vector<char>(b.data.begin(), b.data.end()));
  } catch (const std::exception&) {
    // fall through to raw bytes
  }
  spdlog::warn("dcpp: bytes item '{}' cannot be decoded; exported as raw "
               "torch.save bytes in a uint8 tensor (torch.load(io.BytesIO("
               "t.numpy().tobytes())) reads it)",
               key);
  auto t = at::empty({static_cast<int64_t>(b.data.size())}, at::kByte);
  if (!b.data.empty())
    std::memcpy(t.data_ptr(), b.data.data(), b.data.size());
  return c10::IValue{t};
}

c10::impl::GenericDict str_dict() {
  return c10::impl::GenericDict{c10::StringType::get(), c10::AnyType::get()};
}

caf::expected<c10::IValue>
to_ivalue(const nested_node& node,
          const std::map<std::string, const value*>& values) {
  using kind = nested_node::kind;
  switch (node.type) {
    case kind::none: return c10::IValue{};
    case kind::leaf: {
      auto i = values.find(node.fqn);
      if (i == values.end() || i->second == nullptr)
        return make_error(errc::missing_key,
                          "no value for key '" + node.fqn + "'");
      if (auto* t = std::get_if<at::Tensor>(i->second)) {
        // Compact: pickle_save writes a view's whole storage.
        auto x = t->contiguous();
        if (x.storage().nbytes() != x.nbytes())
          x = x.clone();
        return c10::IValue{x};
      }
      if (auto* b = std::get_if<bytes_value>(i->second))
        return decode_bytes(node.fqn, *b);
      return make_error(errc::unsupported,
                        "key '" + node.fqn
                          + "': only plain tensors and bytes values can be "
                            "written to a torch.save file");
    }
    case kind::dict: {
      auto dict = str_dict();
      for (const auto& [name, child] : node.children) {
        auto x = to_ivalue(child, values);
        if (!x)
          return x;
        dict.insert_or_assign(name, std::move(*x));
      }
      return c10::IValue{dict};
    }
    case kind::list: {
      c10::impl::GenericList list{c10::AnyType::get()};
      for (const auto& [name, child] : node.children) {
        auto x = to_ivalue(child, values);
        if (!x)
          return x;
        list.push_back(std::move(*x));
      }
      return c10::IValue{list};
    }
  }
  return c10::IValue{};
}

// -- optimizer state dicts ----------------------------------------------------

bool is_position(const std::string& s) {
  return !s.empty() && s.size() <= 18
         && s.find_first_not_of("0123456789") == std::string::npos
         && (s == "0" || s[0] != '0');
}

/// A dict keyed "0".."n-1" as a list in that order, or None.
c10::optional<c10::impl::GenericList>
positions_as_list(const c10::impl::GenericDict& d) {
  if (!d.keyType()->isSubtypeOf(*c10::StringType::get()))
    return c10::nullopt;
  std::vector<c10::IValue> items(d.size());
  std::vector<bool> seen(d.size(), false);
  for (const auto& e : d) {
    const auto& k = e.key().toStringRef();
    if (!is_position(k))
      return c10::nullopt;
    auto pos = std::stoull(k);
    if (pos >= items.size() || seen[pos])
      return c10::nullopt;
    seen[pos] = true;
    items[pos] = e.value();
  }
  c10::impl::GenericList list{c10::AnyType::get()};
  for (auto& x : items)
    list.push_back(std::move(x));
  return list;
}

/// The parameter ids of an optimizer's "param_groups", or None if it is
/// not a list of dicts whose "params" are lists of ints.
c10::optional<std::set<int64_t>> param_ids(const c10::IValue& groups) {
  if (!groups.isList())
    return c10::nullopt;
  std::set<int64_t> ids;
  for (const auto& g : groups.toListRef()) {
    if (!g.isGenericDict())
      return c10::nullopt;
    auto d = g.toGenericDict();
    if (!d.keyType()->isSubtypeOf(*c10::StringType::get()))
      return c10::nullopt;
    auto p = d.find(c10::IValue{std::string{"params"}});
    if (p == d.end() || !p->value().isList())
      return c10::nullopt;
    for (const auto& id : p->value().toListRef()) {
      if (!id.isInt())
        return c10::nullopt;
      ids.insert(id.toInt());
    }
  }
  return ids;
}

void restore_optimizer_keys(c10::IValue& x);

/// `d` as an optimizer's state dict, repaired (see the header), if it is
/// one.
void repair_optimizer(c10::impl::GenericDict& d) {
  if (!d.keyType()->isSubtypeOf(*c10::StringType::get()))
    return;
  auto groups = d.find(c10::IValue{std::string{"param_groups"}});
  if (groups == d.end())
    return;
  if (groups->value().isGenericDict())
    if (auto list = positions_as_list(groups->value().toGenericDict()))
      d.insert_or_assign(std::string{"param_groups"}, c10::IValue{*list});
  auto ids = param_ids(d.at(c10::IValue{std::string{"param_groups"}}));
  if (!ids)
    return;
  auto state = d.find(c10::IValue{std::string{"state"}});
  if (state == d.end()) {
    d.insert_or_assign(std::string{"state"},
                       c10::IValue{c10::impl::GenericDict{
                         c10::IntType::get(), c10::AnyType::get()}});
    return;
  }
  if (!state->value().isGenericDict())
    return;
  auto old = state->value().toGenericDict();
  if (!old.keyType()->isSubtypeOf(*c10::StringType::get()))
    return;
  for (const auto& e : old) {
    const auto& k = e.key().toStringRef();
    if (!is_position(k) || ids->count(std::stoll(k)) == 0)
      return;
  }
  c10::impl::GenericDict keyed{c10::IntType::get(), c10::AnyType::get()};
  for (const auto& e : old)
    keyed.insert(
      c10::IValue{static_cast<int64_t>(std::stoll(e.key().toStringRef()))},
      e.value());
  d.insert_or_assign(std::string{"state"}, c10::IValue{keyed});
}

void restore_optimizer_keys(c10::IValue& x) {
  if (x.isGenericDict()) {
    auto d = x.toGenericDict();
    for (auto& e : d) {
      auto v = e.value();
      restore_optimizer_keys(v);
      e.setValue(std::move(v));
    }
    repair_optimizer(d);
  } else if (x.isList()) {
    auto list = x.toList();
    for (size_t i = 0; i < list.size(); ++i) {
      c10::IValue v = list.get(i);
      restore_optimizer_keys(v);
      list.set(i, std::move(v));
    }
  }
}

// -- the file -----------------------------------------------------------------

/// Writes `data` to `path` atomically: `path.tmp`, fsync, rename, fsync dir.
caf::error write_atomically(const std::string& path,
                            const std::vector<char>& data) {
  auto tmp = path + ".tmp";
  auto fail = [&tmp](const char* what, int err) {
    ::unlink(tmp.c_str());
    return detail::os_error(what, tmp, err);
  };
  // Never replaces a link, device or FIFO someone put at `path`.
  if (auto err = detail::check_output_path(path))
    return err;
  {
    // Created afresh: a planted `OUT.tmp` link is removed, never written
    // through.
    detail::fd_guard fd{
      detail::create_exclusive(tmp, O_WRONLY | O_CLOEXEC, 0644)};
    if (fd.get() < 0)
      return detail::os_error("open", tmp, errno);
    uint64_t done = 0;
    if (auto err = detail::write_fully(fd.get(), data.data(), data.size(),
                                       done))
      return fail("write", err < 0 ? ENOSPC : err);
    if (auto err = detail::fsync_fd(fd.get()))
      return fail("fsync", err);
    if (fd.close() != 0)
      return fail("close", errno);
  }
  if (auto err = detail::check_output_path(path)) {
    ::unlink(tmp.c_str());
    return err;
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0)
    return fail("rename", errno);
  auto parent = std::filesystem::path{path}.parent_path().string();
  return detail::fsync_dir(parent.empty() ? "." : parent);
}

} // namespace

caf::error write_torch_save(const std::string& path, const nested_node& tree,
                            const std::map<std::string, const value*>& values,
                            const torch_save_write_options& opts) {
  try {
    auto root = to_ivalue(tree, values);
    if (!root)
      return with_context(root.error(), path);
    if (opts.restore_optimizer_keys)
      restore_optimizer_keys(*root);
    auto data = torch::jit::pickle_save(*root);
    return write_atomically(path, data);
  } catch (const std::exception& e) {
    std::string what = e.what();
    return make_error(errc::unsupported,
                      path + ": torch: " + what.substr(0, what.find('\n')));
  }
}

} // namespace dcpp
