#include "actors/transport/launch_env.hpp"

#include "core/error.hpp"

#include <catch2/catch.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <string>

using namespace dcpp;

namespace {

/// An environment from a map, for read_launch_env.
struct fake_env {
  std::map<std::string, std::string> vars;

  const char* operator()(const char* name) const {
    auto i = vars.find(name);
    return i == vars.end() ? nullptr : i->second.c_str();
  }
};

caf::expected<launch_env> read(std::map<std::string, std::string> vars) {
  fake_env env{std::move(vars)};
  return read_launch_env([env](const char* n) { return env(n); });
}

} // namespace

TEST_CASE("torchrun variables come first", "[launch_env]") {
  auto env = read({{"RANK", "2"},
                   {"WORLD_SIZE", "4"},
                   {"LOCAL_RANK", "0"},
                   {"MASTER_ADDR", "10.1.2.3"},
                   {"MASTER_PORT", "29501"},
                   {"DCPP_SECRET", "s3cret"},
                   {"SLURM_PROCID", "7"},
                   {"SLURM_NTASKS", "8"}});
  REQUIRE(env);
  CHECK(env->rank == 2);
  CHECK(env->world_size == 4);
  CHECK(env->local_rank == 0);
  CHECK(env->master_addr == "10.1.2.3");
  CHECK(env->master_port == 29501);
  CHECK(env->secret == "s3cret");
  CHECK(env->source == "torchrun");
}

TEST_CASE("SLURM and Open MPI are fallbacks", "[launch_env]") {
  auto slurm = read({{"SLURM_PROCID", "5"},
                     {"SLURM_NTASKS", "6"},
                     {"SLURM_LOCALID", "1"},
                     {"SLURM_LAUNCH_NODE_IPADDR", "192.0.2.1"}});
  REQUIRE(slurm);
  CHECK(slurm->rank == 5);
  CHECK(slurm->world_size == 6);
  CHECK(slurm->local_rank == 1);
  CHECK(slurm->master_addr == "192.0.2.1");
  CHECK(slurm->source == "slurm");
  auto mpi = read(
    {{"OMPI_COMM_WORLD_RANK", "0"}, {"OMPI_COMM_WORLD_SIZE", "2"}});
  REQUIRE(mpi);
  CHECK(mpi->rank == 0);
  CHECK(mpi->world_size == 2);
  CHECK(mpi->local_rank == 0);
  CHECK(mpi->source == "openmpi");
}

TEST_CASE("no launcher means a world of one on loopback", "[launch_env]") {
  auto env = read({});
  REQUIRE(env);
  CHECK(env->rank == 0);
  CHECK(env->world_size == 1);
  CHECK(env->master_addr == "127.0.0.1");
  CHECK(env->source == "default");
  CHECK(env->secret.empty());
}

TEST_CASE("bad values are refused naming the variable", "[launch_env]") {
  auto check_bad = [](std::map<std::string, std::string> vars,
                      const std::string& name) {
    auto env = read(std::move(vars));
    REQUIRE(!env);
    CHECK(code_of(env.error()) == errc::invalid_argument);
    CHECK(context_of(env.error()).find(name) != std::string::npos);
  };
  check_bad({{"RANK", "x"}, {"WORLD_SIZE", "2"}}, "RANK");
  check_bad({{"RANK", "2"}, {"WORLD_SIZE", "2"}}, "WORLD_SIZE");
  check_bad({{"RANK", "0"}}, "WORLD_SIZE");
  check_bad({{"RANK", "-1"}, {"WORLD_SIZE", "2"}}, "RANK");
  check_bad({{"MASTER_PORT", "70000"}}, "MASTER_PORT");
  check_bad({{"MASTER_PORT", "12ab"}}, "MASTER_PORT");
}

TEST_CASE("the job id comes from DCPP_JOB_ID, else from the launcher",
          "[launch_env]") {
  auto id = [](std::map<std::string, std::string> vars) {
    auto env = read(std::move(vars));
    REQUIRE(env);
    return env->job_id;
  };
  CHECK(id({}).empty());
  CHECK(id({{"DCPP_JOB_ID", "j1"}, {"TORCHELASTIC_RUN_ID", "t"}}) == "j1");
  CHECK(id({{"TORCHELASTIC_RUN_ID", "t"}, {"SLURM_JOB_ID", "9"}}) == "t");
  CHECK(id({{"SLURM_JOB_ID", "9"}, {"SLURM_STEP_ID", "2"}}) == "9.2");
  CHECK(id({{"SLURM_JOB_ID", "9"}}) == "9");
  CHECK(id({{"OMPI_MCA_ess_base_jobid", "41"}}) == "41");
  CHECK(id({{"DCPP_JOB_ID", ""}, {"SLURM_JOB_ID", "9"}}) == "9");
}

TEST_CASE("the secret may come from a private key file", "[launch_env]") {
  auto dir = std::filesystem::temp_directory_path()
             / ("dcpp-secret-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  auto file = (dir / "secret").string();
  {
    std::ofstream out{file};
    out << "from-the-file\n";
  }
  ::chmod(file.c_str(), 0600);
  auto env = read({{"DCPP_SECRET_FILE", file}});
  REQUIRE(env);
  CHECK(env->secret == "from-the-file");
  SECTION("DCPP_SECRET wins over the file") {
    auto both = read({{"DCPP_SECRET", "inline"}, {"DCPP_SECRET_FILE", file}});
    REQUIRE(both);
    CHECK(both->secret == "inline");
  }
  SECTION("a file others may read is refused") {
    ::chmod(file.c_str(), 0644);
    auto open = read({{"DCPP_SECRET_FILE", file}});
    REQUIRE(!open);
    CHECK(describe(open.error()).find("chmod 600") != std::string::npos);
  }
  SECTION("a missing or empty file is refused, naming it") {
    auto missing = read({{"DCPP_SECRET_FILE", file + ".none"}});
    REQUIRE(!missing);
    CHECK(describe(missing.error()).find(file + ".none") != std::string::npos);
    std::ofstream{file, std::ios::trunc}.flush();
    auto empty = read({{"DCPP_SECRET_FILE", file}});
    REQUIRE(!empty);
    CHECK(describe(empty.error()).find("is empty") != std::string::npos);
  }
  std::filesystem::remove_all(dir);
}

TEST_CASE("the coordinator's endpoint: DCPP_ first, then the launcher's",
          "[launch_env]") {
  auto own = read({{"DCPP_MASTER_ADDR", "10.0.0.9"},
                   {"DCPP_MASTER_PORT", "4000"},
                   {"MASTER_ADDR", "10.0.0.1"},
                   {"MASTER_PORT", "29500"},
                   {"TORCHELASTIC_USE_AGENT_STORE", "True"},
                   {"DCPP_BIND_ADDR", "*"}});
  REQUIRE(own);
  CHECK(own->master_addr == "10.0.0.9");
  CHECK(own->master_port == 4000);
  CHECK(own->bind_addr == "*");
  CHECK(!own->agent_store); // DCPP_MASTER_PORT: the port is ours
  auto torchrun = read({{"RANK", "1"},
                        {"WORLD_SIZE", "2"},
                        {"MASTER_ADDR", "localhost"},
                        {"MASTER_PORT", "29500"},
                        {"TORCHELASTIC_USE_AGENT_STORE", "True"},
                        {"TORCHELASTIC_RESTART_COUNT", "2"}});
  REQUIRE(torchrun);
  CHECK(torchrun->agent_store);
  CHECK(torchrun->restart_count == 2);
  CHECK(torchrun->master_addr == "localhost");
  auto standalone = read({{"RANK", "1"},
                          {"WORLD_SIZE", "2"},
                          {"TORCHELASTIC_USE_AGENT_STORE", "False"}});
  REQUIRE(standalone);
  CHECK(!standalone->agent_store);
  auto slurm = read({{"SLURM_PROCID", "1"},
                     {"SLURM_NTASKS", "4"},
                     {"SLURM_STEP_NODELIST", "gpu[07-09,12]"},
                     {"SLURM_LAUNCH_NODE_IPADDR", "192.0.2.1"}});
  REQUIRE(slurm);
  CHECK(slurm->master_addr == "gpu07");
}

TEST_CASE("the first host of a SLURM node list", "[launch_env]") {
  CHECK(first_slurm_host("node1") == "node1");
  CHECK(first_slurm_host("node1,node2") == "node1");
  CHECK(first_slurm_host("node[007-009]") == "node007");
  CHECK(first_slurm_host("node[3,5-6],gpu1") == "node3");
  CHECK(first_slurm_host("rack[1-2]-n") == "rack1-n");
  CHECK(first_slurm_host("a,b[1-2]") == "a");
  CHECK(first_slurm_host("").empty());
  CHECK(first_slurm_host("node[x]").empty());
  CHECK(first_slurm_host("node[1").empty());
}

TEST_CASE("SLURM host lists expand in every documented form", "[launch_env]") {
  using hosts = std::vector<std::string>;
  auto expand = [](const std::string& list) {
    auto got = expand_slurm_host_list(list);
    REQUIRE(got);
    return *got;
  };
  CHECK(expand("node1") == hosts{"node1"});
  CHECK(expand("node1,gpu2") == hosts{"node1", "gpu2"});
  CHECK(expand("node[07-09,12]")
        == hosts{"node07", "node08", "node09", "node12"});
  CHECK(expand("n[8-10]") == hosts{"n8", "n9", "n10"});
  CHECK(expand("n[098-101]") == hosts{"n098", "n099", "n100", "n101"});
  // Several bracket groups: the rightmost turns fastest.
  CHECK(
    expand("rack[1-2]-node[01-02]")
    == hosts{"rack1-node01", "rack1-node02", "rack2-node01", "rack2-node02"});
  CHECK(expand("rack[1-2]-node[01-04]").size() == 8);
  CHECK(expand("a[1,3]b[5]c,d[2-3]") == hosts{"a1b5c", "a3b5c", "d2", "d3"});
  CHECK(first_slurm_host("rack[1-2]-node[01-04]") == "rack1-node01");
  CHECK(first_slurm_host("rack[3-4]-node[01-04],gpu[1-2]") == "rack3-node01");
  // Malformed lists and huge expansions fail naming the list.
  for (auto bad :
       {"", "a,,b", "n[1-", "n[x]", "n[3-1]", "n]1[", "n[]", "n[1-2,]"}) {
    auto got = expand_slurm_host_list(bad);
    REQUIRE_FALSE(got);
    CHECK(code_of(got.error()) == errc::invalid_argument);
    CHECK_THAT(describe(got.error()), Catch::Contains("SLURM host list"));
  }
  auto huge = expand_slurm_host_list("n[1-999999]-m[1-999999]", 1000);
  REQUIRE_FALSE(huge);
  CHECK_THAT(describe(huge.error()), Catch::Contains("more than 1000 hosts"));
}
