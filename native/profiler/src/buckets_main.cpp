// tailwatch-buckets: for each unsigned decimal value on stdin (one per line) prints
// "value<TAB>bucket_index<TAB>bucket_lower<TAB>bucket_width". Exit 2 on a line that is not a uint64.
#include <iostream>
#include <string>

#include "tailwatch/buckets.h"

int main() {
  std::string line;
  std::string out;
  while (std::getline(std::cin, line)) {
    if (line.empty()) continue;
    std::size_t used = 0;
    unsigned long long value = 0;
    try {
      if (line[0] < '0' || line[0] > '9') throw std::invalid_argument("not a number");
      value = std::stoull(line, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != line.size()) {
      std::cerr << "tailwatch-buckets: not an unsigned 64-bit value: '" << line << "'" << std::endl;
      return 2;
    }
    const auto index = tailwatch::bucket_index(value);
    out += std::to_string(value) + '\t' + std::to_string(index) + '\t' +
           std::to_string(tailwatch::bucket_lower(index)) + '\t' + std::to_string(tailwatch::bucket_width(index)) +
           '\n';
  }
  std::cout << out;
  return 0;
}
