// Unicode character classes for the GPT-2 pre-tokenization rule (tokenizer.cpp).
#pragma once

namespace sqa::unicode {

struct CodeRange {
  char32_t lo, hi;  // inclusive
};

bool is_letter(char32_t cp);  // general category L* (\p{L})
bool is_number(char32_t cp);  // general category N* (\p{N})

// The Unicode White_Space property (\s in the regex engines tokenizers use).
inline bool is_space(char32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
         cp == 0x205F || cp == 0x3000;
}

}  // namespace sqa::unicode
