// Bad inputs to the Qwen3.5 model: bad ids, slots and lengths are refused by field and leave the slots
// untouched; checkpoints that disagree with their config are refused with every problem listed.
#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>

#include "golden.h"
#include "models/qwen35/model.h"
#include "runner/model_runner.h"

namespace deltaserve::models::qwen35 {
namespace {

using ::testing::HasSubstr;

std::unique_ptr<runner::ModelRunner> Load(const std::string& dir) {
  runner::RunnerOptions ro;
  ro.max_seqs = 2;
  ro.max_model_len = 80;
  absl::StatusOr<std::unique_ptr<runner::ModelRunner>> m = runner::ModelRunner::Load(dir, ModelOptions{}, ro);
  EXPECT_TRUE(m.ok()) << m.status();
  return m.ok() ? *std::move(m) : nullptr;
}

TEST(Qwen35ModelArgs, BadRequestsAreRefusedAndLeaveSlotsUnchanged) {
  std::unique_ptr<runner::ModelRunner> m = Load(deltaserve::testing::GoldenRoot() + "/flat_untied");
  ASSERT_NE(m, nullptr);
  ASSERT_TRUE(m->Forward({{5, 6, 7}}, {1}).ok());
  auto expect = [&](const absl::StatusOr<at::Tensor>& r, const std::string& what) {
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(what));
  };
  expect(m->Forward({{1, 512}}, {0}), "tokens[0][1]: id 512 is outside the vocabulary [0, 512)");
  expect(m->Forward({{1, -3}}, {0}), "id -3");
  expect(m->Forward({{1}}, {2}), "slots[0]: 2 is outside [0, 2)");
  expect(m->Forward({{1}, {2}}, {0, 0}), "appears twice");
  expect(m->Forward({{}}, {0}), "tokens[0]: empty");
  expect(m->Forward({{1}}, {0, 1}), "slots: 2 given for 1 sequences");
  expect(m->Forward({}, {}), "no sequences");
  expect(m->Forward({std::vector<int32_t>(78, 1)}, {1}), "over max_model_len 80");
  EXPECT_EQ(m->SequenceLength(1), 3);
  EXPECT_EQ(m->SequenceLength(0), 0);
  EXPECT_EQ(m->ResetSlot(5).code(), absl::StatusCode::kInvalidArgument);
}

// A copy of a golden checkpoint, in a fresh temporary directory, whose config.json is edited by `edit`.
// (No std::filesystem operations here: LibTorch's exported copies of them crash; see safetensors.cc.)
std::vector<std::string>& TempDirs() {
  static std::vector<std::string> dirs;
  return dirs;
}

std::string EditedCheckpoint(const std::function<void(nlohmann::json&)>& edit) {
  const std::string src = deltaserve::testing::GoldenRoot() + "/flat_untied";
  std::string templ = "/tmp/deltaserve_qwen35_XXXXXX";
  const std::string dir = mkdtemp(templ.data());
  std::ifstream weights(src + "/model.safetensors", std::ios::binary);
  std::ofstream(dir + "/model.safetensors", std::ios::binary) << weights.rdbuf();
  std::ifstream in(src + "/config.json");
  nlohmann::json config = nlohmann::json::parse(in);
  edit(config);
  std::ofstream(dir + "/config.json") << config.dump();
  TempDirs().push_back(dir);
  return dir;
}

void RemoveTempDirs() {
  for (const std::string& dir : TempDirs()) {
    ::unlink((dir + "/model.safetensors").c_str());
    ::unlink((dir + "/config.json").c_str());
    ::rmdir(dir.c_str());
  }
  TempDirs().clear();
}

TEST(Qwen35ModelArgs, CheckpointThatDisagreesWithConfigListsEveryProblem) {
  ModelOptions o;
  absl::StatusOr<std::unique_ptr<Qwen35Model>> m =
      Qwen35Model::Load(EditedCheckpoint([](nlohmann::json& c) { c["num_hidden_layers"] = 7; }), o);
  ASSERT_FALSE(m.ok());
  EXPECT_THAT(std::string(m.status().message()), HasSubstr("missing [model.layers.6.input_layernorm.weight"));
  m = Qwen35Model::Load(EditedCheckpoint([](nlohmann::json& c) { c["intermediate_size"] = 96; }), o);
  ASSERT_FALSE(m.ok());
  EXPECT_THAT(std::string(m.status().message()),
              HasSubstr("model.layers.0.mlp.gate_proj.weight: expected shape [96, 64], found [128, 64]"));
  EXPECT_THAT(std::string(m.status().message()), HasSubstr("model.layers.5.mlp.down_proj.weight"));
  m = Qwen35Model::Load(EditedCheckpoint([](nlohmann::json& c) { c["num_hidden_layers"] = 5; }), o);
  ASSERT_FALSE(m.ok());
  EXPECT_THAT(std::string(m.status().message()), HasSubstr("unexpected [model.layers.5."));
  m = Qwen35Model::Load("/nonexistent/deltaserve/model", o);
  EXPECT_FALSE(m.ok());
  RemoveTempDirs();
}

}  // namespace
}  // namespace deltaserve::models::qwen35
