#include <iostream>
#include <string>
#include <vector>

#include "profiler.h"
#include "tailwatch/config.h"

int main(int argc, char** argv) {
  const std::vector<std::string> args(argv, argv + argc);
  tailwatch::Config config;
  try {
    config = tailwatch::parse_config(args, tailwatch::process_env());
  } catch (const tailwatch::UsageError& error) {
    std::cerr << "tailwatch-profiler: " << error.what() << " (see --help)" << std::endl;
    return 2;
  }
  if (config.help) {
    std::cout << tailwatch::usage();
    return 0;
  }
  return tailwatch::run_profiler(config, std::cout, std::cerr);
}
