// `optiq compare` on stories260K: the table's rows, the files it writes, and
// that optiq's plan at the uniform 4-bit size is no worse than uniform there.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "test_util.h"

namespace optiq {
namespace {

TEST(Compare, TableFilesAndPlots) {
  const std::string dir = test::temp_dir();
  const std::string data = test::shared_dir() + "/data/tinystories/tinystories-valid-head.txt";
  const std::string model = test::shared_dir() + "/models/stories260K/stories260K.gguf";
  // Calibrate on the first 100 kB, evaluate on the next 100 kB.
  const std::string all = test::read_file(data);
  ASSERT_GT(all.size(), 200000u);
  std::ofstream(dir + "/calib.txt") << all.substr(0, 100000);
  std::ofstream(dir + "/eval.txt") << all.substr(100000, 100000);
  const std::string out = dir + "/cmp";
  const auto r = test::run_optiq("-t 1 compare " + model + " --calib " + dir + "/calib.txt --calib-samples 16 --calib-seq 256 --text " +
                                 dir + "/eval.txt --ctx 256 --chunks 8 --sweep '' --gen-tokens 8 -o " + out + " --json",
                                 /*merge_stderr=*/false);
  ASSERT_EQ(r.code, 0) << r.out;
  const auto j = nlohmann::json::parse(r.out.substr(r.out.find('{')));
  ASSERT_EQ(j["rows"].size(), 5u);  // FP16, uniform 8, optiq @8, uniform 4, optiq @4
  std::map<std::string, nlohmann::json> by_label;
  for (const auto& row : j["rows"]) by_label[row["label"]] = row;
  ASSERT_TRUE(by_label.count("uniform 4-bit g64"));
  const auto& u4 = by_label["uniform 4-bit g64"];
  const auto& o4 = by_label["optiq mixed @ uniform 4-bit size"];
  EXPECT_LE(o4["bytes"].get<int64_t>(), u4["bytes"].get<int64_t>());
  EXPECT_GT(u4["kld"].get<double>(), 0.0);
  EXPECT_LE(o4["kld"].get<double>(), u4["kld"].get<double>() * 1.05);
  EXPECT_LT(by_label["FP16 (reference precision)"]["kld"].get<double>(), 1e-3);
  EXPECT_GT(by_label["uniform 8-bit g64"]["decode_tok_s"].get<double>(), 0.0);
  for (const char* f : {"compare.md", "compare.json", "pareto.svg", "precision_map.svg", "profile.json",
                        "plan-q4g64-size.json"})
    EXPECT_TRUE(std::filesystem::exists(out + "/" + f)) << f;
  EXPECT_FALSE(std::filesystem::exists(out + "/.scratch-model"));
  const std::string md = test::read_file(out + "/compare.md");
  EXPECT_NE(md.find("| uniform 4-bit g64 |"), std::string::npos) << md;
  EXPECT_NE(test::read_file(out + "/pareto.svg").find("optiq mixed"), std::string::npos);

  // --replot redraws the plots from compare.json without measuring.
  std::filesystem::remove(out + "/pareto.svg");
  const auto re = test::run_optiq("compare " + model + " --replot " + out);
  EXPECT_EQ(re.code, 0) << re.out;
  EXPECT_TRUE(std::filesystem::exists(out + "/pareto.svg"));

  // Bad input: a missing text file is a one-line error before any work.
  const auto bad = test::run_optiq("compare " + model + " --calib " + dir + "/calib.txt --text /nonexistent.txt -o " + out);
  EXPECT_EQ(bad.code, 1);
  EXPECT_NE(bad.out.find("/nonexistent.txt"), std::string::npos) << bad.out;
}

}  // namespace
}  // namespace optiq
