// Project errors, as in tiue_export/errors.py: the example prints their message on one line and
// exits with their code (InputError: 2, bad input or bundle; Error: 1, the job failed).
#pragma once

#include <stdexcept>
#include <string>

namespace tiue {

/// A failure the user can act on; exit code 1.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
  virtual int exit_code() const noexcept { return 1; }
};

/// Bad input: a path, a bundle, an array of the wrong shape. Exit code 2.
class InputError : public Error {
 public:
  using Error::Error;
  int exit_code() const noexcept override { return 2; }
};

/// The first line of a message (ONNX Runtime and TensorRT errors can span many).
std::string first_line(const std::string& text);

}  // namespace tiue
