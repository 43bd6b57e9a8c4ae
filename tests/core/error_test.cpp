#include "core/error.hpp"

#include <caf/sec.hpp>

#include <catch2/catch.hpp>

#include <set>

using namespace dcpp;

TEST_CASE("every errc value has a distinct name", "[error]") {
  std::set<std::string> names;
  for (int i = 0; i < static_cast<int>(errc::num_values); ++i) {
    auto name = to_string(static_cast<errc>(i));
    INFO("errc value " << i);
    CHECK(name.find("<invalid") == std::string::npos);
    CHECK(!name.empty());
    names.insert(name);
  }
  CHECK(names.size() == static_cast<size_t>(errc::num_values));
  CHECK(to_string(errc::num_values).find("<invalid") != std::string::npos);
}

TEST_CASE("errors carry their context and render it", "[error]") {
  auto err = make_error(errc::missing_key, "model.weight");
  CHECK(code_of(err) == errc::missing_key);
  CHECK(context_of(err) == "model.weight");
  CHECK(describe(err) == "dcpp::missing_key: model.weight");
  auto wrapped = with_context(err, "rank 3");
  CHECK(code_of(wrapped) == errc::missing_key);
  CHECK(describe(wrapped) == "dcpp::missing_key: rank 3: model.weight");
  CHECK(code_of(caf::error{}) == errc::none);
  CHECK(describe(caf::error{}) == "no error");
}

TEST_CASE("CAF errors are described and wrapped", "[error]") {
  caf::error err = caf::sec::request_timeout;
  CHECK(describe(err) == "caf::request_timeout");
  auto wrapped = with_context(err, "plan step", errc::timeout);
  CHECK(code_of(wrapped) == errc::timeout);
  CHECK(context_of(wrapped) == "plan step: caf::request_timeout");
}
