#include "storage/pickle.hpp"

#include "core/error.hpp"
#include "tests/storage_format/test_data.hpp"

#include <catch2/catch.hpp>

#include <cstdint>
#include <string>

using namespace dcpp;
using namespace std::string_literals;
using pickle::kind;
using pickle::value_ptr;

namespace {

/// Structural equality of two value graphs (shared references compare by
/// content).
bool same(const value_ptr& x, const value_ptr& y) {
  if (!x || !y)
    return !x && !y;
  if (x->k != y->k || x->b != y->b || x->i != y->i || x->s != y->s
      || x->name != y->name || x->newobj != y->newobj
      || x->items.size() != y->items.size()
      || x->dictitems.size() != y->dictitems.size())
    return false;
  if (x->k == kind::floating && x->f != y->f)
    return false;
  for (size_t i = 0; i < x->items.size(); ++i)
    if (!same(x->items[i], y->items[i]))
      return false;
  for (size_t i = 0; i < x->dictitems.size(); ++i)
    if (!same(x->dictitems[i], y->dictitems[i]))
      return false;
  return same(x->state, y->state);
}

value_ptr read_ok(const std::string& bytes) {
  auto result = pickle::read(bytes);
  if (!result)
    FAIL("read failed: " << describe(result.error()));
  return *result;
}

std::string read_error(const std::string& bytes) {
  auto result = pickle::read(bytes);
  REQUIRE(!result);
  CHECK(code_of(result.error()) == errc::corrupt_metadata);
  return context_of(result.error());
}

} // namespace

TEST_CASE("CPython pickles of plain values read at protocols 2, 4 and 5",
          "[pickle]") {
  for (int proto : {2, 4, 5}) {
    INFO("protocol " << proto);
    auto root = read_ok(
      test::read_data("pickle/values_p" + std::to_string(proto) + ".pickle"));
    REQUIRE(root->is(kind::dict));
    auto get = [&](const char* key) {
      auto x = root->get(key);
      INFO("key " << key);
      REQUIRE(x);
      return x;
    };
    CHECK(get("none")->is(kind::none));
    CHECK(get("true")->is(kind::boolean));
    CHECK(get("true")->b);
    CHECK(!get("false")->b);
    CHECK(get("i1")->i == 7);
    CHECK(get("i2")->i == 300);
    CHECK(get("i4")->i == -5);
    CHECK(get("i4max")->i == INT32_MAX);
    CHECK(get("l1")->i == (int64_t{1} << 40));
    CHECK(get("l1neg")->i == INT64_MIN);
    CHECK(get("l1max")->i == INT64_MAX);
    CHECK(get("float")->is(kind::floating));
    CHECK(get("float")->f == 1.5);
    CHECK(get("text")->s == "h\xc3\xa9llo \xe2\x98\x83");
    if (proto == 2) {
      // Protocol 2 has no bytes opcode: _codecs.encode(latin-1 text).
      auto b = get("bytes");
      REQUIRE(b->is(kind::object));
      CHECK(b->global_module() == "_codecs");
      CHECK(b->global_name() == "encode");
      CHECK(b->items[1]->items[0]->s == "\x00\x01"s);
    } else {
      CHECK(get("bytes")->is(kind::bytes));
      CHECK(get("bytes")->s == "\x00\x01"s);
    }
    for (size_t n : {0, 1, 2, 3, 5}) {
      auto t = get(("t" + std::to_string(n)).c_str());
      REQUIRE(t->is(kind::tuple));
      REQUIRE(t->items.size() == n);
      for (size_t i = 0; i < n; ++i)
        CHECK(t->items[i]->i == static_cast<int64_t>(i + 1));
    }
    auto nested = get("nested");
    REQUIRE(nested->is(kind::list));
    REQUIRE(nested->items.size() == 2);
    CHECK(nested->items[1]->items[1]->items[0]->i == 3);
    auto set = get("set");
    CHECK(set->global_name() == "set");
    CHECK(set->items[1]->items[0]->items[0]->i == 4);
    auto frozen = get("frozenset");
    CHECK(frozen->global_name() == "frozenset");
    CHECK(frozen->items[1]->items[0]->items[0]->i == 5);
    auto shared = get("shared");
    REQUIRE(shared->items.size() == 2);
    CHECK(shared->items[0].get() == shared->items[1].get());
    CHECK(shared->items[0]->items[0]->i == 9);
    auto odict = get("odict");
    CHECK(odict->is(kind::object));
    CHECK(odict->global_module() == "collections");
    CHECK(odict->global_name() == "OrderedDict");
    CHECK(!odict->newobj);
    CHECK(odict->items[1]->items.empty());
  }
}

TEST_CASE("ints are written as CPython's protocol-2 pickler writes them",
          "[pickle]") {
  auto body = [](int64_t x) {
    auto out = pickle::write(*pickle::make_int(x));
    REQUIRE(out.size() >= 3);
    CHECK(out.substr(0, 2) == "\x80\x02");
    CHECK(out.back() == '.');
    return out.substr(2, out.size() - 3);
  };
  // Expected bytes from `pickle.dumps(x, 2)` on CPython 3.11.
  CHECK(body(0) == "K\x00"s);
  CHECK(body(255) == "K\xff"s);
  CHECK(body(256) == "M\x00\x01"s);
  CHECK(body(65535) == "M\xff\xff"s);
  CHECK(body(65536) == "J\x00\x00\x01\x00"s);
  CHECK(body(-1) == "J\xff\xff\xff\xff"s);
  CHECK(body(-129) == "J\x7f\xff\xff\xff"s);
  CHECK(body(INT32_MAX) == "J\xff\xff\xff\x7f"s);
  CHECK(body(INT32_MIN) == "J\x00\x00\x00\x80"s);
  CHECK(body(int64_t{1} << 31) == "\x8a\x05\x00\x00\x00\x80\x00"s);
  CHECK(body(-(int64_t{1} << 31) - 1) == "\x8a\x05\xff\xff\xff\x7f\xff"s);
  CHECK(body(int64_t{1} << 40) == "\x8a\x06\x00\x00\x00\x00\x00\x01"s);
  CHECK(body(INT64_MIN) == "\x8a\x08\x00\x00\x00\x00\x00\x00\x00\x80"s);
  CHECK(body(INT64_MAX) == "\x8a\x08\xff\xff\xff\xff\xff\xff\xff\x7f"s);
  CHECK(body(9187343239835811840)
        == "\x8a\x08\x00\x00\x00\x00\x00\x00\x80\x7f"s);
  // And every width reads back.
  for (int shift = 0; shift < 63; ++shift) {
    for (int64_t base : {int64_t{1}, int64_t{-1}}) {
      for (int64_t delta : {-1, 0, 1}) {
        int64_t x = base * (int64_t{1} << shift) + delta;
        auto back = read_ok(pickle::write(*pickle::make_int(x)));
        REQUIRE(back->is(kind::integer));
        CHECK(back->i == x);
      }
    }
  }
}

TEST_CASE("the writer emits the protocol-2 opcodes of the recipe", "[pickle]") {
  using namespace pickle;
  CHECK(write(*make_float(1.5)) == "\x80\x02G?\xf8\x00\x00\x00\x00\x00\x00."s);
  CHECK(write(*make_tuple({})) == "\x80\x02)."s);
  CHECK(write(*make_tuple({make_int(1), make_int(2), make_int(3), make_int(4)}))
        == "\x80\x02(K\x01K\x02K\x03K\x04t."s);
  CHECK(write(*make_tuple({make_int(1)})) == "\x80\x02K\x01\x85."s);
  CHECK(write(*make_list({})) == "\x80\x02]."s);
  CHECK(write(*make_list({make_none()})) == "\x80\x02](Ne."s);
  CHECK(write(*make_dict({})) == "\x80\x02}."s);
  CHECK(write(*make_dict({{make_string("a"), make_bool(true)}}))
        == "\x80\x02}(X\x01\x00\x00\x00"
           "a\x88u."s);
  CHECK(
    write(*make_newobj(make_global("m", "C"), make_tuple({}), make_dict({})))
    == "\x80\x02\x63m\nC\n)\x81}b."s);
  CHECK(
    write(*make_reduce(make_global("m", "f"), make_tuple({make_bool(false)})))
    == "\x80\x02\x63m\nf\n\x89\x85R."s);
  CHECK(write(*make_persid(make_string("k")))
        == "\x80\x02X\x01\x00\x00\x00kQ."s);
}

TEST_CASE("write then read gives the same graph", "[pickle]") {
  for (int proto : {2, 4, 5}) {
    INFO("protocol " << proto);
    auto root = read_ok(
      test::read_data("pickle/values_p" + std::to_string(proto) + ".pickle"));
    auto again = read_ok(pickle::write(*root));
    CHECK(same(root, again));
  }
  // Hand-built values, including a global whose name GLOBAL cannot spell.
  using namespace pickle;
  auto tree = make_dict({
    {make_string("x"), make_list({make_int(-7), make_float(-0.25)})},
    {make_string("g"), make_global("odd\nmodule", "name")},
    {make_string("o"),
     make_newobj(make_global("m", "C"), make_tuple({make_int(1)}),
                 make_tuple({make_string("state")}))},
    {make_string("b"), make_persid(make_tuple({make_string("storage")}))},
  });
  CHECK(same(tree, read_ok(write(*tree))));
}

TEST_CASE("a torch.save data.pkl decodes to the tensor rebuild call",
          "[pickle]") {
  // Item `f32` of the 1.13 fixture: archive/data.pkl is at [64, 64 + 154).
  auto item = test::read_data("dcp-1.13/ckpt_113_per_item/__0_0.distcp");
  REQUIRE(item.size() == 747);
  auto root = read_ok(item.substr(64, 154));
  REQUIRE(root->is(kind::object));
  CHECK(!root->newobj);
  CHECK(root->global_module() == "torch._utils");
  CHECK(root->global_name() == "_rebuild_tensor_v2");
  const auto& args = root->items[1];
  REQUIRE(args->is(kind::tuple));
  REQUIRE(args->items.size() == 6);
  const auto& storage = args->items[0];
  REQUIRE(storage->is(kind::persid));
  const auto& pid = storage->items[0];
  REQUIRE(pid->is(kind::tuple));
  REQUIRE(pid->items.size() == 5);
  CHECK(pid->items[0]->s == "storage");
  CHECK(pid->items[1]->is(kind::global));
  CHECK(pid->items[1]->s == "torch");
  CHECK(pid->items[1]->name == "FloatStorage");
  CHECK(pid->items[2]->s == "0");
  CHECK(pid->items[3]->s == "cpu");
  CHECK(pid->items[4]->i == 6);
  CHECK(args->items[1]->i == 0);
  REQUIRE(args->items[2]->items.size() == 2);
  CHECK(args->items[2]->items[0]->i == 2);
  CHECK(args->items[2]->items[1]->i == 3);
  CHECK(args->items[3]->items[0]->i == 3);
  CHECK(args->items[3]->items[1]->i == 1);
  CHECK(args->items[4]->is(kind::boolean));
  CHECK(args->items[5]->global_name() == "OrderedDict");
  // What the writer makes of it reads back the same.
  CHECK(same(root, read_ok(pickle::write(*root))));
}

TEST_CASE("an OrderedDict keeps its entries and its state", "[pickle]") {
  // pickle.dumps(od, 2) of an OrderedDict with a `_metadata` attribute (what
  // model.state_dict() returns): REDUCE, SETITEMS on the object, BUILD.
  auto root = read_ok("\x80\x02"
                      "ccollections\nOrderedDict\nq\x00)Rq\x01"
                      "(X\x01\x00\x00\x00"
                      "aK\x01X\x01\x00\x00\x00"
                      "bK\x02u"
                      "}X\x09\x00\x00\x00"
                      "_metadataK\x03"
                      "sb."s);
  REQUIRE(root->is(kind::object));
  CHECK(root->global_name() == "OrderedDict");
  REQUIRE(root->dictitems.size() == 4);
  CHECK(root->dictitems[0]->s == "a");
  CHECK(root->dictitems[3]->i == 2);
  REQUIRE(root->state);
  CHECK(root->state->get("_metadata")->i == 3);
  CHECK(same(root, read_ok(pickle::write(*root))));
  auto made = pickle::make_ordered_dict(
    {{pickle::make_string("a"), pickle::make_int(1)},
     {pickle::make_string("b"), pickle::make_int(2)}});
  auto back = read_ok(pickle::write(*made));
  CHECK(same(made, back));
  // A set takes no dict entries.
  CHECK(read_error("\x80\x04\x8f(K\x01K\x02u."s).find("not a dict")
        != std::string::npos);
}

TEST_CASE("LONG1 and LONG4 accept exactly the int64 range", "[pickle]") {
  auto long1 = [](const std::string& bytes) {
    return "\x80\x02\x8a"s + static_cast<char>(bytes.size()) + bytes + ".";
  };
  CHECK(read_ok(long1(""))->i == 0);
  CHECK(read_ok(long1("\xff"s))->i == -1);
  CHECK(read_ok(long1("\x00\x00\x00\x00\x00\x00\x00\x80\xff\xff"s))->i
        == INT64_MIN);
  CHECK(read_ok(long1("\xff\xff\xff\xff\xff\xff\xff\x7f\x00"s))->i
        == INT64_MAX);
  // 2^63 and -2^63 - 1 do not fit.
  CHECK(
    read_error(long1("\x00\x00\x00\x00\x00\x00\x00\x80\x00"s)).find("64 bits")
    != std::string::npos);
  CHECK(
    read_error(long1("\xff\xff\xff\xff\xff\xff\xff\x7f\xff"s)).find("64 bits")
    != std::string::npos);
  CHECK(read_error(long1("\x00\x00\x00\x00\x00\x00\x00\x00\x01"s)).find("LONG1")
        != std::string::npos);
  // LONG4: explicit 4-byte length.
  CHECK(read_ok("\x80\x02\x8b\x02\x00\x00\x00\x01\x01."s)->i == 257);
  CHECK(read_ok("\x80\x02\x8b\x00\x00\x00\x00."s)->i == 0);
  read_error("\x80\x02\x8b\xff\xff\xff\xff."s);
  read_error("\x80\x02\x8b\x00\x00\x00\x10\x01."s);
}

TEST_CASE("the memo works for every put/get form", "[pickle]") {
  // BINPUT / BINGET, LONG_BINPUT / LONG_BINGET with a huge index, PUT / GET
  // in text form, MEMOIZE.
  auto root = read_ok("\x80\x02(K\x07q\x05h\x05K\x08r\x00\x00\x00\xf0"
                      "j\x00\x00\x00\xf0K\x09p12\ng12\nK\x0a\x94h\x03t."s);
  REQUIRE(root->items.size() == 8);
  int64_t expected[] = {7, 7, 8, 8, 9, 9, 10, 10};
  for (size_t i = 0; i < 8; ++i)
    CHECK(root->items[i]->i == expected[i]);
  CHECK(read_error("\x80\x02h\x00."s).find("memo index 0")
        != std::string::npos);
  CHECK(read_error("\x80\x02K\x01q\x01h\x02."s).find("BINGET")
        != std::string::npos);
  read_error("\x80\x02g1x\n."s);
  read_error("\x80\x02q\x00."s); // nothing to memoize
}

TEST_CASE("errors name the opcode and its offset", "[pickle]") {
  auto msg = read_error("\x80\x02X\xff\xff\xff\xff"s);
  CHECK(msg.find("BINUNICODE") != std::string::npos);
  CHECK(msg.find("offset 2") != std::string::npos);
  msg = read_error("\x80\x02K\x01\xff"s);
  CHECK(msg.find("unsupported opcode") != std::string::npos);
  CHECK(msg.find("0xff") != std::string::npos);
  CHECK(msg.find("offset 4") != std::string::npos);
  msg = read_error("\x80\x02K\x01"s);
  CHECK(msg.find("before STOP") != std::string::npos);
  msg = read_error("\x80\x06K\x01."s);
  CHECK(msg.find("protocol 6") != std::string::npos);
  msg = read_error("\x80\x02\x85."s);
  CHECK(msg.find("TUPLE1") != std::string::npos);
  CHECK(msg.find("underflow") != std::string::npos);
  msg = read_error("\x80\x02K\x01K\x02."s);
  CHECK(msg.find("more than one value") != std::string::npos);
  msg = read_error("\x80\x02K\x01.junk"s);
  CHECK(msg.find("trailing") != std::string::npos);
}

TEST_CASE("text opcodes and framing of every protocol are handled",
          "[pickle]") {
  // Protocol 0/1 spelling: MARK ... LIST/DICT/TUPLE, GLOBAL, POP, POP_MARK.
  auto root = read_ok("((K\x01K\x02l(X\x01\x00\x00\x00"
                      "aK\x03"
                      "d"
                      "(K\x05K\x06"
                      "1"
                      "cmod\nname\nN0t."s);
  REQUIRE(root->is(kind::tuple));
  REQUIRE(root->items.size() == 3);
  CHECK(root->items[0]->items.size() == 2);
  CHECK(root->items[1]->get("a")->i == 3);
  CHECK(root->items[2]->is(kind::global));
  // FRAME (protocol 4) and BINUNICODE8 / BINBYTES8 / SHORT_BINSTRING.
  root = read_ok("\x80\x04\x95\x1a\x00\x00\x00\x00\x00\x00\x00("
                 "\x8d\x01\x00\x00\x00\x00\x00\x00\x00x"
                 "\x8e\x01\x00\x00\x00\x00\x00\x00\x00y"
                 "U\x01zt."s);
  REQUIRE(root->items.size() == 3);
  CHECK(root->items[0]->is(kind::string));
  CHECK(root->items[1]->is(kind::bytes));
  CHECK(root->items[2]->s == "z");
  read_error("\x80\x04\x95\xff\xff\xff\xff\xff\xff\xff\xffN."s);
  // NEWOBJ_EX with empty kwargs is a NEWOBJ.
  root = read_ok("\x80\x04\x63m\nC\n)}\x92."s);
  CHECK(root->newobj);
  CHECK(root->items.size() == 2);
}
