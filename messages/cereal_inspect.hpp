#pragma once

// Private to messages/messages.cpp (the wire codec): cereal archives driven
// by the `inspect` overloads of messages/inspect.hpp, messages/messages.hpp
// and core/error.hpp, so that a type's fields are listed once. Nothing else
// includes cereal: the transport and the actors see only messages/wire.hpp.
//
// - `serialize(Archive&, T&)`, for every dcpp type with an `inspect`
//   overload and any cereal archive, feeds the fields that `inspect` lists
//   to the archive in order: `caf::meta::type_name` and other annotations
//   write nothing, a `wire_name` wraps the next field in a
//   `cereal::make_nvp` (portable binary ignores the name; the decoder
//   reports it).
// - `caf::error` (CAF's type, which CAF inspects its own way) gets cereal
//   `save`/`load`: code, category and the context rendered as one string.

#include "messages/inspect.hpp"

#include <caf/atom.hpp>
#include <caf/error.hpp>
#include <caf/make_message.hpp>
#include <caf/message.hpp>
#include <caf/meta/annotation.hpp>

#include <cereal/cereal.hpp>
#include <cereal/types/common.hpp>
#include <cereal/types/map.hpp>
#include <cereal/types/string.hpp>
#include <cereal/types/utility.hpp>
#include <cereal/types/vector.hpp>

#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>

namespace dcpp {

template <class Archive>
constexpr bool is_cereal_archive
  = std::is_base_of<cereal::detail::InputArchiveBase, Archive>::value
    || std::is_base_of<cereal::detail::OutputArchiveBase, Archive>::value;

/// An inspector (in CAF 0.17's sense: `f(type_name, fields...)`) that hands
/// each field to a cereal archive.
template <class Archive>
class cereal_inspector {
public:
  using result_type = void;
  /// Encoding reads the fields, decoding writes them.
  static constexpr bool reads_state
    = std::is_base_of<cereal::detail::OutputArchiveBase, Archive>::value;
  static constexpr bool writes_state = !reads_state;

  explicit cereal_inspector(Archive& ar) : ar_(ar) {
    // nop
  }

  template <class... Ts>
  void operator()(Ts&&... xs) {
    (apply(xs), ...);
  }

private:
  void apply(const wire_name& x) {
    name_ = x.value;
  }

  void apply(const caf::meta::annotation&) {
    // type_name: cereal's portable binary encoding has no type names
  }

  template <class T>
  std::enable_if_t<!caf::meta::is_annotation<T>::value> apply(T& x) {
    if (name_ != nullptr) {
      ar_(cereal::make_nvp(name_, x));
      name_ = nullptr;
    } else {
      ar_(x);
    }
  }

  Archive& ar_;
  /// The `wire_name` of the next field, if any.
  const char* name_ = nullptr;
};

/// Found by ADL for every type in namespace dcpp (and for containers of
/// them, where it drops out because no `inspect` takes a container).
template <class Archive, class T>
auto serialize(Archive& ar, T& x) -> std::enable_if_t<
  is_cereal_archive<Archive>,
  decltype(inspect(std::declval<cereal_inspector<Archive>&>(), x))> {
  cereal_inspector<Archive> f{ar};
  inspect(f, x);
}

} // namespace dcpp

namespace cereal {

/// caf::error on the wire: code, category (the atom's text) and context as
/// one string. A dcpp error round-trips exactly (its context is one string);
/// other errors keep code, category and a rendering of their context.
template <class Archive>
void save(Archive& ar, const caf::error& x) {
  uint8_t code = x ? x.code() : uint8_t{0};
  std::string category = x ? caf::to_string(x.category()) : std::string{};
  std::string context;
  if (x && !x.context().empty()) {
    const auto& ctx = x.context();
    // dcpp errors carry their text first (data may follow it).
    if (ctx.match_element<std::string>(0))
      context = ctx.get_as<std::string>(0);
    else
      context = caf::to_string(ctx);
  }
  ar(code, category, context);
}

template <class Archive>
void load(Archive& ar, caf::error& x) {
  uint8_t code = 0;
  std::string category;
  std::string context;
  ar(code, category, context);
  // Only what `save` produces is accepted: "no error" is all empty, an error
  // has a nonzero code and a category that is an atom's exact text (anything
  // else would decode into a different error, or into none at all).
  if (code == 0) {
    if (!category.empty() || !context.empty())
      throw cereal::Exception("caf::error: code 0 with category or context");
    x = caf::error{};
    return;
  }
  if (category.empty() || category.size() > 10)
    throw cereal::Exception("caf::error: invalid category of "
                            + std::to_string(category.size()) + " bytes");
  auto cat = caf::atom_from_string(category);
  if (caf::to_string(cat) != category)
    throw cereal::Exception("caf::error: category is not an atom");
  if (context.empty())
    x = caf::error{code, cat};
  else
    x = caf::error{code, cat, caf::make_message(std::move(context))};
}

} // namespace cereal
