// Qwen3.5 config.json parsing: the real 0.8B text dimensions in the nested (multimodal) and flat forms,
// the transformers defaults, and every refusal naming its field.
#include "models/qwen35/config.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace deltaserve::models::qwen35 {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using Json = nlohmann::json;
constexpr LayerType kL = LayerType::kLinearAttention;
constexpr LayerType kF = LayerType::kFullAttention;

// Qwen3.5-0.8B's text config as its config.json spells it (sizes from docs/DESIGN.md).
Json Text08B() {
  return Json::parse(R"({
    "attention_bias": false,
    "attn_output_gate": true,
    "dtype": "bfloat16",
    "eos_token_id": 248044,
    "full_attention_interval": 4,
    "head_dim": 256,
    "hidden_act": "silu",
    "hidden_size": 1024,
    "initializer_range": 0.02,
    "intermediate_size": 3584,
    "layer_types": [
      "linear_attention", "linear_attention", "linear_attention", "full_attention",
      "linear_attention", "linear_attention", "linear_attention", "full_attention",
      "linear_attention", "linear_attention", "linear_attention", "full_attention",
      "linear_attention", "linear_attention", "linear_attention", "full_attention",
      "linear_attention", "linear_attention", "linear_attention", "full_attention",
      "linear_attention", "linear_attention", "linear_attention", "full_attention"
    ],
    "linear_conv_kernel_dim": 4,
    "linear_key_head_dim": 128,
    "linear_num_key_heads": 16,
    "linear_num_value_heads": 16,
    "linear_value_head_dim": 128,
    "mamba_ssm_dtype": "float32",
    "max_position_embeddings": 262144,
    "mlp_only_layers": [],
    "model_type": "qwen3_5_text",
    "mtp_num_hidden_layers": 1,
    "mtp_use_dedicated_embeddings": false,
    "num_attention_heads": 8,
    "num_hidden_layers": 24,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06,
    "rope_parameters": {
      "mrope_interleaved": true,
      "mrope_section": [11, 11, 10],
      "partial_rotary_factor": 0.25,
      "rope_theta": 10000000,
      "rope_type": "default"
    },
    "tie_word_embeddings": true,
    "use_cache": true,
    "vocab_size": 248320
  })");
}

Json Nested(Json text) {
  return Json{{"architectures", {"Qwen3_5ForConditionalGeneration"}},
              {"model_type", "qwen3_5"},
              {"image_token_id", 248056},
              {"tie_word_embeddings", true},
              {"text_config", std::move(text)},
              {"vision_config", {{"model_type", "qwen3_5"}, {"depth", 12}, {"hidden_size", 768}}}};
}

Json Flat(Json text) {
  text["architectures"] = {"Qwen3_5ForCausalLM"};
  return text;
}

absl::StatusOr<Qwen35Config> Parse(const Json& j) { return ParseQwen35Config(j.dump()); }

std::vector<LayerType> EveryFourth(int n) {
  std::vector<LayerType> t;
  for (int i = 0; i < n; ++i) t.push_back((i + 1) % 4 == 0 ? kF : kL);
  return t;
}

void ExpectQwen08B(const Qwen35Config& c) {
  EXPECT_EQ(c.vocab_size, 248320);
  EXPECT_EQ(c.hidden_size, 1024);
  EXPECT_EQ(c.intermediate_size, 3584);
  EXPECT_EQ(c.num_hidden_layers, 24);
  EXPECT_EQ(c.layer_types, EveryFourth(24));
  EXPECT_EQ(c.num_attention_heads, 8);
  EXPECT_EQ(c.num_key_value_heads, 2);
  EXPECT_EQ(c.head_dim, 256);
  EXPECT_DOUBLE_EQ(c.partial_rotary_factor, 0.25);
  EXPECT_EQ(c.rotary_dim(), 64);
  EXPECT_DOUBLE_EQ(c.rope_theta, 1e7);
  EXPECT_THAT(c.mrope_section, ElementsAre(11, 11, 10));
  EXPECT_TRUE(c.mrope_interleaved);
  EXPECT_EQ(c.linear_num_key_heads, 16);
  EXPECT_EQ(c.linear_num_value_heads, 16);
  EXPECT_EQ(c.linear_key_head_dim, 128);
  EXPECT_EQ(c.linear_value_head_dim, 128);
  EXPECT_EQ(c.linear_conv_kernel_dim, 4);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.max_position_embeddings, 262144);
  EXPECT_EQ(c.torch_dtype, "bfloat16");
  EXPECT_THAT(c.eos_token_ids, ElementsAre(248044));
  EXPECT_EQ(c.bos_token_id, -1);
}

void ExpectError(const Json& j, const std::string& message) {
  auto c = Parse(j);
  ASSERT_FALSE(c.ok()) << "accepted: " << j.dump();
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(), HasSubstr(message));
}

TEST(Qwen35ConfigTest, Nested08B) {
  auto c = Parse(Nested(Text08B()));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, "Qwen3_5ForConditionalGeneration");
  EXPECT_TRUE(c->nested_text_config);
  ExpectQwen08B(*c);
}

TEST(Qwen35ConfigTest, Flat08B) {
  auto c = Parse(Flat(Text08B()));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, "Qwen3_5ForCausalLM");
  EXPECT_FALSE(c->nested_text_config);
  ExpectQwen08B(*c);
}

TEST(Qwen35ConfigTest, ArchitectureDefaultsFromShape) {
  Json nested = Nested(Text08B());
  nested.erase("architectures");
  auto c = Parse(nested);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, "Qwen3_5ForConditionalGeneration");
  Json flat = Text08B();
  flat.erase("model_type");
  c = Parse(flat);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, "Qwen3_5ForCausalLM");
  EXPECT_FALSE(c->nested_text_config);
}

TEST(Qwen35ConfigTest, LayerTypesDerivedFromInterval) {
  Json text = Text08B();
  text.erase("layer_types");
  text.erase("full_attention_interval");  // transformers' default interval is 4
  auto c = Parse(Nested(text));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->layer_types, EveryFourth(24));

  text["num_hidden_layers"] = 7;
  text["full_attention_interval"] = 3;
  c = Parse(Flat(text));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_THAT(c->layer_types, ElementsAre(kL, kL, kF, kL, kL, kF, kL));
}

TEST(Qwen35ConfigTest, LayerTypesGivenWinOverInterval) {
  Json text = Text08B();
  text["num_hidden_layers"] = 5;
  text["full_attention_interval"] = 2;
  text["layer_types"] = {"full_attention", "linear_attention", "linear_attention", "attention", "mamba"};
  auto c = Parse(Nested(text));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_THAT(c->layer_types, ElementsAre(kF, kL, kL, kF, kL));  // legacy names remapped as transformers does
}

TEST(Qwen35ConfigTest, EosIntOrList) {
  Json text = Text08B();
  text["eos_token_id"] = {248046, 248044};
  auto c = Parse(Nested(text));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_THAT(c->eos_token_ids, ElementsAre(248046, 248044));

  // Absent from text_config: the outer config's is used.
  text.erase("eos_token_id");
  Json nested = Nested(text);
  nested["eos_token_id"] = 7;
  nested["bos_token_id"] = 5;
  c = Parse(nested);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_THAT(c->eos_token_ids, ElementsAre(7));
  EXPECT_EQ(c->bos_token_id, 5);

  text["eos_token_id"] = nullptr;
  c = Parse(Flat(text));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->eos_token_ids.empty());

  text["eos_token_id"] = "248044";
  ExpectError(Flat(text), "eos_token_id: expected an integer or a list of integers, got string");
  text["eos_token_id"] = {1, "2"};
  ExpectError(Nested(text), "text_config.eos_token_id[1]: expected an integer, got string");
}

TEST(Qwen35ConfigTest, TransformersDefaults) {
  Json text = Text08B();
  for (const char* key :
       {"head_dim", "linear_key_head_dim", "linear_value_head_dim", "linear_conv_kernel_dim", "rms_norm_eps",
        "max_position_embeddings", "tie_word_embeddings", "rope_parameters", "dtype", "eos_token_id",
        "hidden_act", "attention_bias", "attn_output_gate"}) {
    text.erase(key);
  }
  Json nested = Nested(text);
  nested.erase("tie_word_embeddings");
  auto c = Parse(nested);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->head_dim, 256);  // Qwen3_5TextConfig.head_dim, not hidden_size / heads (= 128 here)
  EXPECT_EQ(c->linear_key_head_dim, 128);
  EXPECT_EQ(c->linear_value_head_dim, 128);
  EXPECT_EQ(c->linear_conv_kernel_dim, 4);
  EXPECT_DOUBLE_EQ(c->rms_norm_eps, 1e-6);
  EXPECT_EQ(c->max_position_embeddings, 32768);
  EXPECT_FALSE(c->tie_word_embeddings);
  EXPECT_DOUBLE_EQ(c->rope_theta, 10000.0);  // transformers' default_theta when no rope_theta is given
  EXPECT_DOUBLE_EQ(c->partial_rotary_factor, 0.25);
  EXPECT_TRUE(c->mrope_section.empty());
  EXPECT_FALSE(c->mrope_interleaved);
  EXPECT_EQ(c->torch_dtype, "");
  EXPECT_TRUE(c->eos_token_ids.empty());
}

TEST(Qwen35ConfigTest, TieWordEmbeddingsFromOuterConfigWhenNested) {
  Json text = Text08B();
  text["tie_word_embeddings"] = false;
  Json nested = Nested(text);
  nested["tie_word_embeddings"] = true;
  auto c = Parse(nested);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->tie_word_embeddings);
  nested.erase("tie_word_embeddings");
  text["tie_word_embeddings"] = true;
  nested["text_config"] = text;
  c = Parse(nested);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->tie_word_embeddings);
}

TEST(Qwen35ConfigTest, RopeScalingAndTopLevelFallbacks) {
  Json text = Text08B();
  text.erase("rope_parameters");
  text["rope_scaling"] = {{"type", "default"}, {"mrope_section", {16, 24, 24}}, {"mrope_interleaved", false}};
  text["rope_theta"] = 5000000.0;
  text["partial_rotary_factor"] = 0.5;
  auto c = Parse(Nested(text));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_DOUBLE_EQ(c->rope_theta, 5e6);
  EXPECT_DOUBLE_EQ(c->partial_rotary_factor, 0.5);
  EXPECT_EQ(c->rotary_dim(), 128);
  EXPECT_THAT(c->mrope_section, ElementsAre(16, 24, 24));
  EXPECT_FALSE(c->mrope_interleaved);

  // Values inside the rope dict take priority over the top-level ones.
  text["rope_scaling"]["rope_theta"] = 1e6;
  text["rope_scaling"]["partial_rotary_factor"] = 0.25;
  c = Parse(Flat(text));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_DOUBLE_EQ(c->rope_theta, 1e6);
  EXPECT_DOUBLE_EQ(c->partial_rotary_factor, 0.25);
}

TEST(Qwen35ConfigTest, RefusesMoe) {
  Json text = Text08B();
  text["num_experts"] = 256;
  text["num_experts_per_tok"] = 8;
  ExpectError(Nested(text), "text_config.num_experts: MoE variants are not supported yet");
  ExpectError(Flat(text), "num_experts: MoE variants are not supported yet");

  Json moe = Nested(Text08B());
  moe["model_type"] = "qwen3_5_moe";
  moe["architectures"] = {"Qwen3_5MoeForConditionalGeneration"};
  ExpectError(moe, "MoE variants are not supported yet");
  moe.erase("architectures");
  ExpectError(moe, "model_type: \"qwen3_5_moe\": MoE variants are not supported yet");

  text = Text08B();
  text["model_type"] = "qwen3_5_moe_text";
  ExpectError(Nested(text),
              "text_config.model_type: \"qwen3_5_moe_text\": MoE variants are not supported yet");

  text = Text08B();
  text["num_experts"] = 0;  // a dense config may carry the field switched off
  EXPECT_TRUE(Parse(Nested(text)).ok());
}

TEST(Qwen35ConfigTest, RefusesNonDefaultRope) {
  Json text = Text08B();
  text["rope_parameters"]["rope_type"] = "yarn";
  text["rope_parameters"]["factor"] = 4.0;
  ExpectError(Nested(text), "text_config.rope_parameters.rope_type: \"yarn\" is not supported");
  ExpectError(Flat(text), "rope_parameters.rope_type: \"yarn\" is not supported");

  text.erase("rope_parameters");
  text["rope_scaling"] = {{"type", "yarn"}, {"factor", 4.0}};
  ExpectError(Nested(text), "text_config.rope_scaling.type: \"yarn\" is not supported");
}

TEST(Qwen35ConfigTest, MissingRequiredField) {
  Json text = Text08B();
  text.erase("hidden_size");
  ExpectError(Nested(text), "text_config.hidden_size: missing");
  auto flat = Parse(Flat(text));
  ASSERT_FALSE(flat.ok());
  EXPECT_TRUE(absl::StartsWith(flat.status().message(), "hidden_size: missing")) << flat.status();
  Json no_text = Nested(Text08B());
  no_text.erase("text_config");
  ExpectError(no_text, "text_config: missing");
}

TEST(Qwen35ConfigTest, LayerTypesLengthMismatch) {
  Json text = Text08B();
  text["num_hidden_layers"] = 12;
  ExpectError(Nested(text),
              "text_config.layer_types: has 24 entries but text_config.num_hidden_layers is 12");
  text = Text08B();
  text["layer_types"][5] = "sliding_attention";
  ExpectError(Flat(text), "layer_types[5]: \"sliding_attention\" is not supported");
}

TEST(Qwen35ConfigTest, WrongJsonTypes) {
  Json text = Text08B();
  text["hidden_size"] = "1024";
  ExpectError(Nested(text), "text_config.hidden_size: expected an integer, got string");
  text = Text08B();
  text["num_attention_heads"] = 8.5;
  ExpectError(Flat(text), "num_attention_heads: expected an integer, got floating-point number");
  text = Text08B();
  text["rms_norm_eps"] = "1e-6";
  ExpectError(Nested(text), "text_config.rms_norm_eps: expected a number, got string");
  text = Text08B();
  text["rope_parameters"]["rope_theta"] = "1e7";
  ExpectError(Nested(text), "text_config.rope_parameters.rope_theta: expected a number, got string");
  text = Text08B();
  text["tie_word_embeddings"] = 1;
  ExpectError(Flat(text), "tie_word_embeddings: expected a boolean, got integer");
  text = Text08B();
  text["layer_types"] = "full_attention";
  ExpectError(Nested(text), "text_config.layer_types: expected an array of strings, got string");
  Json nested = Nested(Text08B());
  nested["text_config"] = {1, 2};
  ExpectError(nested, "text_config: expected an object, got array");
  ExpectError(Json::array(), "expected a JSON object, got array");
  auto bad = ParseQwen35Config("{\"model_type\": ");
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr("not valid JSON"));
}

TEST(Qwen35ConfigTest, RefusesWhatTheModelCannotServe) {
  Json text = Text08B();
  text["num_key_value_heads"] = 3;
  ExpectError(Nested(text),
              "text_config.num_key_value_heads: 3 does not divide text_config.num_attention_heads");
  text = Text08B();
  text["linear_num_value_heads"] = 24;
  text["linear_num_key_heads"] = 16;
  ExpectError(Nested(text), "text_config.linear_num_key_heads: 16 does not divide");
  text = Text08B();
  text["hidden_size"] = 0;
  ExpectError(Nested(text), "text_config.hidden_size: must be positive, got 0");
  text = Text08B();
  text["attention_bias"] = true;
  ExpectError(Nested(text), "text_config.attention_bias: true is not supported");
  text = Text08B();
  text["hidden_act"] = "gelu";
  ExpectError(Nested(text), "text_config.hidden_act: \"gelu\" is not supported");
  text = Text08B();
  text["rope_parameters"]["partial_rotary_factor"] = 0.0;
  ExpectError(Nested(text), "text_config.rope_parameters.partial_rotary_factor: must be in (0, 1]");
  Json other = Text08B();
  other["model_type"] = "qwen3_next";
  ExpectError(other, "model_type: \"qwen3_next\" is not a Qwen3.5 model");
  Json arch = Nested(Text08B());
  arch["architectures"] = {"Qwen3_5ForCausalLM"};
  ExpectError(arch, "architectures[0]: \"Qwen3_5ForCausalLM\" is not supported with a nested text_config");
}

class TempConfigDir : public ::testing::Test {
 protected:
  TempConfigDir()
      : dir_(std::filesystem::temp_directory_path() /
             absl::StrCat("deltaserve_cfg_", ::testing::UnitTest::GetInstance()->current_test_info()->name(),
                          "_", ::getpid())) {
    std::filesystem::create_directories(dir_);
  }
  ~TempConfigDir() override { std::filesystem::remove_all(dir_); }
  void Write(const std::string& text) { std::ofstream(dir_ / "config.json") << text; }
  std::filesystem::path dir_;
};

TEST_F(TempConfigDir, LoadFromDirectory) {
  Write(Nested(Text08B()).dump(2));
  auto c = LoadQwen35Config(dir_.string());
  ASSERT_TRUE(c.ok()) << c.status();
  ExpectQwen08B(*c);
}

TEST_F(TempConfigDir, LoadErrorsNameThePath) {
  const std::string path = (dir_ / "config.json").string();
  auto missing = LoadQwen35Config(dir_.string());
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr(path));

  Json text = Text08B();
  text.erase("vocab_size");
  Write(Nested(text).dump());
  auto bad = LoadQwen35Config(dir_.string());
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr(absl::StrCat(path, ": text_config.vocab_size: missing")));
}

}  // namespace
}  // namespace deltaserve::models::qwen35
