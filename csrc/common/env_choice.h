#pragma once
// Path switches read from the environment on every call, so that tests can force each path.
#include <c10/util/Exception.h>

#include <cstddef>
#include <cstdlib>
#include <initializer_list>
#include <string>

namespace cnnops {

// Where the value of the environment variable `var` stands in `choices`, whose first entry
// is the default (also when the variable is unset or empty). Any other value is a
// ValueError naming the op, the variable, the choices and the value.
inline std::size_t env_choice(const char* op, const char* var, std::initializer_list<const char*> choices) {
  const char* env = std::getenv(var);
  const std::string value = env ? env : "";
  if (value.empty()) return 0;
  std::string listed;
  std::size_t i = 0;
  for (const char* choice : choices) {
    if (value == choice) return i;
    listed += (i++ == 0 ? "'" : ", '") + std::string(choice) + "'";
  }
  TORCH_CHECK_VALUE(false, op, ": expected the environment variable ", var, " to be one of ", listed, ", got '",
                    value, "'");
}

}  // namespace cnnops
