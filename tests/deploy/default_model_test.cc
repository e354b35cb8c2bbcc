// The server's default model is found beside the binary (installed prefix or source tree) or through
// DELTASERVE_MODEL_DIR, never through a path compiled in on the build machine.
#include "cli/default_model.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace deltaserve::cli {
namespace {

using ::testing::ElementsAre;

TEST(DefaultModel, InstalledPrefixComesBeforeTheSourceTree) {
  EXPECT_THAT(DefaultModelCandidates("/opt/deltaserve/bin/deltaserve", ""),
              ElementsAre("/opt/deltaserve/share/deltaserve/models/qwen35-small", "/opt/deltaserve/models/qwen35-small",
                          "/opt/models/qwen35-small", "/models/qwen35-small"));
}

TEST(DefaultModel, BuildTreeFindsTheSourceTreeModels) {
  const auto c = DefaultModelCandidates("/src/ds/build/server/deltaserve", "");
  ASSERT_EQ(c.size(), 5u);
  EXPECT_EQ(c[0], "/src/ds/build/share/deltaserve/models/qwen35-small");
  EXPECT_EQ(c[1], "/src/ds/build/models/qwen35-small");
  EXPECT_EQ(c[2], "/src/ds/models/qwen35-small");  // <source>/build/server/deltaserve
}

TEST(DefaultModel, EnvironmentVariableComesFirst) {
  const auto c = DefaultModelCandidates("/usr/local/bin/deltaserve", "/models/mine");
  ASSERT_GE(c.size(), 2u);
  EXPECT_EQ(c[0], "/models/mine");
  EXPECT_EQ(c[1], "/usr/local/share/deltaserve/models/qwen35-small");
}

TEST(DefaultModel, NoExecutablePathLeavesOnlyTheEnvironment) {
  EXPECT_THAT(DefaultModelCandidates("", "/m"), ElementsAre("/m"));
  EXPECT_TRUE(DefaultModelCandidates("", "").empty());
}

TEST(DefaultModel, ThisTestBinaryFindsTheShippedModelInItsSourceTree) {
  // tests run from <build>/tests/deploy/ inside the source tree, so the walk up reaches <source>/models/.
  const std::string dir = DefaultModelDir();
  EXPECT_THAT(dir, ::testing::EndsWith("/models/qwen35-small"));
  EXPECT_THAT(DefaultModelSearchPath(), ::testing::HasSubstr("/share/deltaserve/models/qwen35-small"));
}

}  // namespace
}  // namespace deltaserve::cli
