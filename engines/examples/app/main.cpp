// tiue_app: prompts (stdin, one per line) and seeds to PNGs, with nothing but the installed
// tiue_engines package: the images tiue-export infer --backend onnxruntime makes.
//
//   tiue_app BUNDLE OUT_DIR SEED IMAGES_PER_PROMPT < prompts.txt
//
// Each prompt gets seeds SEED, SEED+1, ... (as infer --seed --num-images); batches of 4 images
// run on two threads sharing one Generator, which is safe on ONNX Runtime.
#include <tiue/generator.hpp>

#include <cstdio>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

int main(int argc, char** argv) {
  if (argc != 5) {
    std::cerr << "usage: tiue_app BUNDLE OUT_DIR SEED IMAGES_PER_PROMPT < prompts.txt\n";
    return 2;
  }
  try {
    const std::filesystem::path out_dir = argv[2];
    const uint64_t seed = std::stoull(argv[3]);
    const int per_prompt = std::stoi(argv[4]);

    std::vector<std::string> prompts;
    std::vector<uint64_t> seeds;
    for (std::string line; std::getline(std::cin, line);)
      for (int j = 0; j < per_prompt; ++j) {
        prompts.push_back(line);
        seeds.push_back(seed + static_cast<uint64_t>(j));
      }

    tiue::GeneratorOptions options;  // ONNX Runtime on the CPU, fused decoder, batches of 4
    options.threads = 1;
    const tiue::Generator gen = tiue::Generator::open(argv[1], options);

    // Two threads, each taking every other batch of 4 (the batches infer runs).
    auto worker = [&](std::size_t first_batch) {
      for (std::size_t start = first_batch * 4; start < prompts.size(); start += 8) {
        const std::size_t end = std::min(prompts.size(), start + 4);
        const tiue::Generation g = gen.generate({prompts.begin() + start, prompts.begin() + end}, {seeds.begin() + start, seeds.begin() + end});
        for (std::size_t i = 0; i < g.images.size(); ++i) {
          char name[32];
          std::snprintf(name, sizeof name, "%03zu.png", start + i);
          gen.write_png(out_dir / name, g.images[i]);
        }
      }
    };
    std::exception_ptr failed[2];
    std::thread threads[2];
    for (std::size_t t = 0; t < 2; ++t)
      threads[t] = std::thread([&, t] {
        try {
          worker(t);
        } catch (...) {
          failed[t] = std::current_exception();
        }
      });
    for (auto& t : threads) t.join();
    for (auto& f : failed)
      if (f) std::rethrow_exception(f);
    std::cout << prompts.size() << " image(s) in " << out_dir.string() << "\n";
    return 0;
  } catch (const tiue::Error& e) {
    std::cerr << "tiue_app: error: " << e.what() << "\n";
    return e.exit_code();
  } catch (const std::exception& e) {  // a bad SEED or IMAGES_PER_PROMPT
    std::cerr << "tiue_app: error: " << e.what() << "\n";
    return 2;
  }
}
