"""Per-document metrics of the held-out perplexity task (referenced from its YAML)."""
import re


def heldout_process_results(doc, results):
    """As lm-eval's wikitext task: words counted with re.split(r"\\s+") and UTF-8 bytes of the
    document (here the document is scored as is: there is no WikiText detokenization)."""
    (loglikelihood,) = results
    text = doc["text"]
    words = len(re.split(r"\s+", text))
    nbytes = len(text.encode("utf-8"))
    return {
        "word_perplexity": (loglikelihood, words),
        "byte_perplexity": (loglikelihood, nbytes),
        "bits_per_byte": (loglikelihood, nbytes),
    }
