"""Reference algorithms of each benchmark's own evaluator, written here from the published source
(read with the project's fetch tool; repository and file named in each docstring). Nothing here calls
the harness's metric code; tests/test_exactness.py and benchmarks/exactness.py compare the harness
with these on generated cases.

Written from:

- TextVQA: facebookresearch/mmf ``mmf/utils/m4c_evaluators.py`` (``EvalAIAnswerProcessor``,
  ``TextVQAAccuracyEvaluator``).
- VizWiz: the VizWiz API's ``vqaEval.py`` (``VQAEval.evaluate``, ``processPunctuation``,
  ``processDigitArticle`` and its contraction table, transcribed below).
- iVQA: antoyang/just-ask ``data/videoqa_loader.py`` (answer counts), ``eval_videoqa.py``
  (``(answer_id / 2).clamp(max=1)``) and ``util.compute_aggreeings`` (``ivqa=True``).
- NExT-QA: doc-doc/NExT-QA ``eval_mc.py`` (``accuracy_metric``) and the models' ``torch.max(out, 1)``.
- STAR: the leaderboard's "Mean" (csbobby/STAR_Benchmark README links the EvalAI challenge 1325,
  whose leaderboard ranks by the mean of the Interaction, Sequence, Prediction and Feasibility
  accuracies; no evaluation script is published).
- Kinetics-700: Flamingo (Alayrac et al. 2022) reports "(top-1 + top-5) / 2"; top-k as
  OpenFlamingo's ``utils.get_predicted_classnames`` (``torch.topk``).
- VisDial: batra-mlp-lab/visdial-challenge-starter-pytorch ``visdialch/metrics.py``
  (``scores_to_ranks``, ``SparseGTMetrics``, ``NDCG``) and ``evaluate.py`` (sparse metrics over every
  val round, NDCG over the dense ones).
- RICES: mlfoundations/open_flamingo ``open_flamingo/eval/rices.py`` (``RICES.find``).
"""

from __future__ import annotations

import collections
import re

import torch

# ---- TextVQA: mmf EvalAIAnswerProcessor + TextVQAAccuracyEvaluator ---------------------------------
# The word tables are the VQA script's (mmf's equal the GT-Vision-Lab ones: 120 contractions, pinned by
# tests/test_protocol.py::test_tables_are_the_official_ones), imported from that pinned copy.
from harness.metrics.vqa import CONTRACTIONS as VQA_CONTRACTIONS  # noqa: E402  (a table, not metric code)

MMF_NUMBER_MAP = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                  "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
MMF_ARTICLES = ["a", "an", "the"]
MMF_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
MMF_COMMA_STRIP = re.compile(r"(?<=\d)(\,)+(?=\d)")
MMF_PUNCTUATIONS = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
                    ",", "?", "!"]


def mmf_answer_processor(item: str) -> str:
    # word_tokenize
    item = item.lower()
    item = item.replace(",", "").replace("?", "").replace("'s", " 's")
    item = item.strip()
    item = item.replace("\n", " ").replace("\t", " ").strip()
    # process_punctuation
    out = item
    for p in MMF_PUNCTUATIONS:
        if (p + " " in item or " " + p in item) or (re.search(MMF_COMMA_STRIP, item) is not None):
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    out = MMF_PERIOD_STRIP.sub("", out, count=re.UNICODE)  # mmf passes re.UNICODE (32) as the count
    # process_digit_article
    words = []
    for word in out.lower().split():
        word = MMF_NUMBER_MAP.get(word, word)
        if word not in MMF_ARTICLES:
            words.append(word)
    return " ".join(VQA_CONTRACTIONS.get(w, w) for w in words)


def mmf_textvqa_accuracy(pred_answer: str, gt_answers: list[str]) -> float:
    """``TextVQAAccuracyEvaluator.eval_pred_list`` for one entry."""
    answers = [mmf_answer_processor(a) for a in gt_answers]
    gt = list(enumerate(answers))
    unique_scores = {}
    for unique in set(answers):
        accs = []
        for g in gt:
            others = [item for item in gt if item != g]
            matching = [item for item in others if item[1] == unique]
            accs.append(min(1, float(len(matching)) / 3))
        unique_scores[unique] = sum(accs) / len(accs)
    return unique_scores.get(mmf_answer_processor(pred_answer), 0.0)


# ---- VizWiz: the VizWiz API's vqaEval.py ---------------------------------------------------------------
#: The API's contraction table, transcribed entry by entry: most apostrophes are U+2019 (’), a few ASCII.
VIZWIZ_API_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn’t’ve", "couldnt’ve": "couldn’t’ve", "didnt": "didn’t", "doesnt": "doesn’t",
    "dont": "don’t", "hadnt": "hadn’t", "hadnt’ve": "hadn’t’ve", "hadn'tve": "hadn’t’ve", "hasnt": "hasn’t",
    "havent": "haven’t", "hed": "he’d", "hed’ve": "he’d’ve", "he’dve": "he’d’ve", "hes": "he’s", "howd": "how’d",
    "howll": "how’ll", "hows": "how’s", "Id’ve": "I’d’ve", "I’dve": "I’d’ve", "Im": "I’m", "Ive": "I’ve",
    "isnt": "isn’t", "itd": "it’d", "itd’ve": "it’d’ve", "it’dve": "it’d’ve", "itll": "it’ll", "let’s": "let’s",
    "maam": "ma’am", "mightnt": "mightn’t", "mightnt’ve": "mightn’t’ve", "mightn’tve": "mightn’t’ve",
    "mightve": "might’ve", "mustnt": "mustn’t", "mustve": "must’ve", "neednt": "needn’t", "notve": "not’ve",
    "oclock": "o’clock", "oughtnt": "oughtn’t", "ow’s’at": "’ow’s’at", "’ows’at": "’ow’s’at",
    "’ow’sat": "’ow’s’at", "shant": "shan’t", "shed’ve": "she’d’ve", "she’dve": "she’d’ve", "she’s": "she’s",
    "shouldve": "should’ve", "shouldnt": "shouldn’t", "shouldnt’ve": "shouldn’t’ve",
    "shouldn’tve": "shouldn’t’ve", "somebody’d": "somebodyd", "somebodyd’ve": "somebody’d’ve",
    "somebody’dve": "somebody’d’ve", "somebodyll": "somebody’ll", "somebodys": "somebody’s",
    "someoned": "someone’d", "someoned’ve": "someone’d’ve", "someone’dve": "someone’d’ve",
    "someonell": "someone’ll", "someones": "someone’s", "somethingd": "something’d",
    "somethingd’ve": "something’d’ve", "something’dve": "something’d’ve", "somethingll": "something’ll",
    "thats": "that’s", "thered": "there’d", "thered’ve": "there’d’ve", "there’dve": "there’d’ve",
    "therere": "there’re", "theres": "there’s", "theyd": "they’d", "theyd’ve": "they’d’ve",
    "they’dve": "they’d’ve", "theyll": "they’ll", "theyre": "they’re", "theyve": "they’ve", "twas": "’twas",
    "wasnt": "wasn’t", "wed’ve": "we’d’ve", "we’dve": "we’d’ve", "weve": "we've", "werent": "weren’t",
    "whatll": "what’ll", "whatre": "what’re", "whats": "what’s", "whatve": "what’ve", "whens": "when’s",
    "whered": "where’d", "wheres": "where's", "whereve": "where’ve", "whod": "who’d", "whod’ve": "who’d’ve",
    "who’dve": "who’d’ve", "wholl": "who’ll", "whos": "who’s", "whove": "who've", "whyll": "why’ll",
    "whyre": "why’re", "whys": "why’s", "wont": "won’t", "wouldve": "would’ve", "wouldnt": "wouldn’t",
    "wouldnt’ve": "wouldn’t’ve", "wouldn’tve": "wouldn’t’ve", "yall": "y’all", "yall’ll": "y’all’ll",
    "y’allll": "y’all’ll", "yall’d’ve": "y’all’d’ve", "y’alld’ve": "y’all’d’ve", "y’all’dve": "y’all’d’ve",
    "youd": "you’d", "youd’ve": "you’d’ve", "you’dve": "you’d’ve", "youll": "you’ll", "youre": "you’re",
    "youve": "you’ve",
}
VIZWIZ_PUNCT = MMF_PUNCTUATIONS
VIZWIZ_COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")


def vizwiz_api_accuracy(res_answer: str, gt_answers: list[str]) -> float:
    """``VQAEval.evaluate``'s per-question accuracy: the result normalised, the answers as written."""
    ans = res_answer.replace("\n", " ").replace("\t", " ").strip()
    out = ans
    for p in VIZWIZ_PUNCT:
        if (p + " " in ans or " " + p in ans) or (re.search(VIZWIZ_COMMA_STRIP, ans) is not None):
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    out = MMF_PERIOD_STRIP.sub("", out, count=re.UNICODE)
    words = []
    for word in out.lower().split():
        word = MMF_NUMBER_MAP.get(word, word)
        if word not in MMF_ARTICLES:
            words.append(word)
    words = [VIZWIZ_API_CONTRACTIONS[w] if w in VIZWIZ_API_CONTRACTIONS else w for w in words]
    ans = " ".join(words)
    accs = []
    for i in range(len(gt_answers)):
        others = [item for j, item in enumerate(gt_answers) if i != j]
        accs.append(min(1, float(len([o for o in others if o == ans])) / 3))
    return float(sum(accs)) / len(accs)


# ---- iVQA: just-ask ------------------------------------------------------------------------------------
def just_ask_ivqa(predicted: str, answer_cells: list) -> float:
    """One question: the dataloader's Counter over answer1..answer5 as read (empty cells are NaN in
    pandas and match nothing), ``(answer_id / 2).clamp(max=1)``, and ``compute_aggreeings(ivqa=True)``
    at threshold 1 for the top-1 prediction."""
    cells = [c if c not in (None, "") else float("nan") for c in answer_cells]
    counts = collections.Counter(cells)
    vocab = {a: i for i, a in enumerate(dict.fromkeys([predicted] + [c for c in counts if isinstance(c, str)]))}
    answer_id = torch.zeros(len(vocab))
    for x in counts:
        if x in vocab:
            answer_id[vocab[x]] = counts[x]
    answer_id = (answer_id / 2).clamp(max=1).unsqueeze(0)
    topk = torch.tensor([[vocab[predicted]]])
    one_hot = torch.nn.functional.one_hot(topk[:, :1], num_classes=answer_id.shape[-1]).sum(1)
    return float((one_hot * answer_id).max(1)[0].sum().item())


# ---- NExT-QA: eval_mc.py ------------------------------------------------------------------------------
NEXTQA_MAP = {"CW": "Why", "CH": "How", "TN": "Bef&Aft", "TC": "When", "DC": "Cnt", "DL": "Loc", "DO": "Other",
              "C": "Acc_C", "T": "Acc_T", "D": "Acc_D"}


def nextqa_prediction(scores: list[float]) -> int:
    """The models' ``_, predict_idx = torch.max(out, 1)`` for one question."""
    return int(torch.max(torch.tensor([scores], dtype=torch.float32), 1)[1][0])


def nextqa_eval_mc(rows: list[dict], preds: dict[str, dict]) -> dict[str, float]:
    """``accuracy_metric``: per group accuracy (0-100) and overall ``Acc``; ``rows`` the CSV's rows."""
    group = {"CW": [], "CH": [], "TN": [], "TC": [], "DC": [], "DL": [], "DO": []}
    for row in rows:
        qtype = "TN" if str(row["type"]) == "TP" else str(row["type"])
        group[qtype].append(f"{row['video']}_{row['qid']}")
    group_acc = {k: 0 for k in group}
    group_cnt = {k: 0 for k in group}
    overall_acc = {"C": 0, "T": 0, "D": 0}
    overall_cnt = {"C": 0, "T": 0, "D": 0}
    all_acc = all_cnt = 0
    for qtype, ids in group.items():
        acc = sum(1 for q in ids if preds[q]["answer"] == preds[q]["prediction"])
        group_cnt[qtype], group_acc[qtype] = len(ids), acc
        overall_acc[qtype[0]] += acc
        overall_cnt[qtype[0]] += len(ids)
        all_acc += acc
        all_cnt += len(ids)
    for qtype, value in overall_acc.items():
        group_acc[qtype], group_cnt[qtype] = value, overall_cnt[qtype]
    out = {NEXTQA_MAP[k]: acc * 100.0 / group_cnt[k] for k, acc in group_acc.items() if group_cnt[k]}
    out["Acc"] = all_acc * 100.0 / all_cnt
    return out


# ---- STAR: the leaderboard's Mean ----------------------------------------------------------------------
STAR_CATEGORIES = ("Interaction", "Sequence", "Prediction", "Feasibility")


def star_leaderboard(results: list[tuple[str, bool]]) -> dict[str, float]:
    """Per-category accuracy (0-100) over (question_id, correct) pairs and their ``Mean``."""
    per = {c: [ok for qid, ok in results if qid.split("_")[0] == c] for c in STAR_CATEGORIES}
    acc = {c: 100.0 * sum(v) / len(v) for c, v in per.items() if v}
    acc["Mean"] = sum(acc[c] for c in STAR_CATEGORIES if c in acc) / len([c for c in STAR_CATEGORIES if c in acc])
    return acc


# ---- classification: OpenFlamingo's top-k, Flamingo's Kinetics number ------------------------------------
def openflamingo_topk(logprobs: list[list[float]], k: int, class_names: list[str]) -> list[list[str]]:
    """``get_predicted_classnames``: ``torch.topk(logprobs, k=k, dim=1)`` indices mapped to names."""
    _, predictions = torch.topk(torch.tensor(logprobs, dtype=torch.float32), k=k, dim=1)
    return [[class_names[i] for i in row] for row in predictions.tolist()]


def flamingo_kinetics(logprobs: list[list[float]], labels: list[str], class_names: list[str]) -> dict[str, float]:
    """top-1 (the first of torch.topk(k=5), as OpenFlamingo's ImageNet), top-5 and their mean, 0-100."""
    top = openflamingo_topk(logprobs, 5, class_names)
    top1 = 100.0 * sum(t[0] == y for t, y in zip(top, labels)) / len(labels)
    top5 = 100.0 * sum(y in t for t, y in zip(top, labels)) / len(labels)
    return {"top1": top1, "top5": top5, "top1_top5_mean": (top1 + top5) / 2}


# ---- VisDial: visdial-challenge-starter-pytorch ------------------------------------------------------------
def scores_to_ranks(scores: torch.Tensor) -> torch.Tensor:
    """``metrics.scores_to_ranks`` (batch, rounds, options) -> 1-based ranks."""
    batch_size, num_rounds, num_options = scores.size()
    scores = scores.view(-1, num_options)
    _, ranked_idx = scores.sort(1, descending=True)
    ranks = ranked_idx.clone().fill_(0)
    for i in range(ranked_idx.size(0)):
        for j in range(num_options):
            ranks[i][ranked_idx[i][j]] = j
    ranks += 1
    return ranks.view(batch_size, num_rounds, num_options)


def visdial_sparse(scores: torch.Tensor, ans_ind: torch.Tensor) -> dict[str, float]:
    """``SparseGTMetrics.observe`` + ``retrieve`` (fractions, as the starter code prints them)."""
    ranks = scores_to_ranks(scores)
    b, r, n = ranks.size()
    ranks = ranks.view(b * r, n)
    gt = ranks[torch.arange(b * r), ans_ind.view(b * r).long()].float()
    return {"r@1": torch.mean((gt <= 1).float()).item(), "r@5": torch.mean((gt <= 5).float()).item(),
            "r@10": torch.mean((gt <= 10).float()).item(), "mean": torch.mean(gt).item(),
            "mrr": torch.mean(gt.reciprocal()).item()}


def visdial_ndcg(scores: torch.Tensor, relevance: torch.Tensor) -> float:
    """``NDCG.observe`` + ``retrieve``: ``scores`` (batch, options) of the dense rounds."""
    ranks = scores_to_ranks(scores.unsqueeze(1)).squeeze(1)
    k = torch.sum(relevance != 0, dim=-1)
    _, rankings = torch.sort(ranks, dim=-1)
    _, best = torch.sort(relevance, dim=-1, descending=True)

    def dcg(order, rel):
        discounts = torch.log2(torch.arange(len(order)).float() + 2)
        return torch.sum(rel[order].cpu().float() / discounts, dim=-1)

    values = [dcg(rankings[i][: k[i]], relevance[i]) / dcg(best[i][: k[i]], relevance[i]) for i in range(len(k))]
    return float(sum(values) / len(values))


# ---- RICES: open_flamingo/eval/rices.py ----------------------------------------------------------------
def rices_find(query_features: torch.Tensor, features: torch.Tensor, num_examples: int) -> list[list[int]]:
    """``RICES.find`` given the (normalised) query features of a batch and the precomputed support
    features: support indices, most similar LAST."""
    similarity = (query_features @ features.T).squeeze()
    if similarity.ndim == 1:
        similarity = similarity.unsqueeze(0)
    indices = similarity.argsort(dim=-1, descending=True)[:, :num_examples]
    return [[int(i) for i in reversed(row)] for row in indices]
