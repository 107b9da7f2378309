// Errors raised by C++ validation; the bindings translate each type into the matching Python exception.
#pragma once
#include <new>
#include <sstream>
#include <stdexcept>
#include <string>

namespace ck {

struct TypeError : std::invalid_argument {  // -> TypeError
  using std::invalid_argument::invalid_argument;
};
struct ValueError : std::domain_error {  // -> ValueError (pybind11 maps domain_error itself, too)
  using std::domain_error::domain_error;
};
struct RuntimeError : std::runtime_error {  // -> RuntimeError
  using std::runtime_error::runtime_error;
};
// -> MemoryError. std::bad_alloc says nothing about the request; this says how many bytes and what for.
struct MemoryError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <class... A>
std::string str(const A&... a) {
  std::ostringstream os;
  (os << ... << a);
  return os.str();
}

// A std::vector<T>(n) that reports a failed allocation as MemoryError with its size and purpose.
template <class V>
V make_buffer(size_t n, const char* what) {
  try {
    return V(n);
  } catch (const std::bad_alloc&) {
    throw MemoryError(str(what, ": could not allocate ", n * sizeof(typename V::value_type), " bytes"));
  } catch (const std::length_error&) {
    throw MemoryError(str(what, ": could not allocate ", n, " elements of ", sizeof(typename V::value_type),
                          " bytes (more than addressable memory)"));
  }
}

}  // namespace ck

#define CK_CHECK_TYPE(cond, ...)                                \
  do {                                                          \
    if (!(cond)) throw ::ck::TypeError(::ck::str(__VA_ARGS__)); \
  } while (0)
#define CK_CHECK_VALUE(cond, ...)                                \
  do {                                                           \
    if (!(cond)) throw ::ck::ValueError(::ck::str(__VA_ARGS__)); \
  } while (0)
#define CK_CHECK(cond, ...)                                        \
  do {                                                             \
    if (!(cond)) throw ::ck::RuntimeError(::ck::str(__VA_ARGS__)); \
  } while (0)
