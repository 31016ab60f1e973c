// Caseless matching of user-visible text (user search): one folding shared
// by the query (protocol decoding) and the indexed display-name words (every
// Store backend), so both sides always agree.
//
// The folding is Unicode's NFKC_Casefold (ICU's Normalizer2): compatibility
// normalisation, full case folding and removal of default-ignorable code
// points. "Élodie", "ÉLODIE", "élodie" and "e\u0301lodie" (decomposed) all
// fold to "élodie"; "ΣΟΦΊΑ" and "Σοφία" to "σοφία"; "ẞ" and "ß" to "ss".
// ASCII folds to ASCII lower case (and takes a fast path without ICU), so a
// pure-ASCII text folds exactly as it did before Unicode folding.
//
// Thread-safe: no state besides ICU's immutable, lazily loaded data.
#pragma once

#include <string>
#include <string_view>

namespace parley {

// Returns `text` folded as above. REQUIRES: `text` is valid UTF-8 (if it is
// not, or ICU fails, the result is `text` with only A-Z lower-cased). The
// result may be longer or shorter than `text`.
std::string FoldForSearch(std::string_view text);

}  // namespace parley
