#include "common/metrics.h"

#include <gtest/gtest.h>

namespace parley {
namespace {

TEST(MetricsTest, RendersCountersGaugesAndHistogramsInPrometheusText) {
  Metrics m;
  m.GetCounter("t_frames_total", "Frames", "type=\"send\"").Inc(3);
  m.GetGauge("t_queue_bytes", "Queue").Set(42);
  auto& h = m.GetHistogram("t_batch", "Batch sizes", {1, 10, 100});
  h.Observe(1);
  h.Observe(5);
  h.Observe(1000);
  m.GetCounter("t_frames_total", "Frames", "type=\"ack\"").Inc();
  std::string text = m.RenderPrometheus();
  EXPECT_NE(text.find("# TYPE t_frames_total counter\n"), std::string::npos);
  EXPECT_NE(text.find("t_frames_total{type=\"send\"} 3\n"), std::string::npos);
  EXPECT_NE(text.find("t_frames_total{type=\"ack\"} 1\n"), std::string::npos);
  EXPECT_NE(text.find("t_queue_bytes 42\n"), std::string::npos);
  EXPECT_NE(text.find("t_batch_bucket{le=\"1\"} 1\n"), std::string::npos);
  EXPECT_NE(text.find("t_batch_bucket{le=\"10\"} 2\n"), std::string::npos);
  EXPECT_NE(text.find("t_batch_bucket{le=\"+Inf\"} 3\n"), std::string::npos);
  EXPECT_NE(text.find("t_batch_count 3\n"), std::string::npos);
  // One HELP line per metric name even with several label sets.
  size_t first = text.find("# HELP t_frames_total");
  EXPECT_EQ(text.find("# HELP t_frames_total", first + 1), std::string::npos);
}

TEST(MetricsTest, SameNameReturnsSameMetric) {
  Metrics m;
  m.GetCounter("t_x", "x").Inc();
  m.GetCounter("t_x", "x").Inc();
  EXPECT_EQ(m.GetCounter("t_x", "x").value(), 2u);
}

}  // namespace
}  // namespace parley
