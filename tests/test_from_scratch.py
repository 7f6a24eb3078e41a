"""DESIGN.md section 2, enforced by reading the source: nothing under ``mylosses/`` may lean on
torch's own losses or on the helpers a loss is supposed to write itself.

Every ``.py`` file under ``mylosses/`` is parsed with :mod:`ast`; imports are followed through
their aliases (``import torch.nn.functional as F``, ``from torch import nn``) so that ``F.x``,
``nn.functional.x`` and ``torch.nn.functional.x`` are all seen as what they are. Forbidden:

- ``torch.nn.functional`` (import or attribute, any alias) and ``torch._C._nn``;
- any torch loss being called: ``torch.nn.<Loss>(...)``, a torch loss's ``forward``,
  ``super().forward(...)`` in a module shell, or a loss function under any torch namespace
  (``torch.kl_div``, ``torch.ops.aten.mse_loss_backward``, ...);
- the helpers DESIGN.md names (``log_softmax``, ``softmax``, ``logsigmoid``,
  ``pairwise_distance``, ``cosine_similarity``, ``cdist``), as functions or as methods, and the
  modules that wrap them (``torch.nn.LogSoftmax``, ...);
- autograd producing a gradient: ``torch.autograd.grad``, ``torch.autograd.backward``,
  ``<tensor>.backward()``, ``torch.autograd.functional.*``, ``torch.func``'s differentiating
  transforms.

Two documented exceptions, each allow-listed by file:

- the plumbing that *patches* torch (``_patch.py``) and pairs our losses with torch's
  (``_registry.py``) may hold the namespace ``torch.nn.functional`` itself as a value (never an
  attribute of it, never a call through it);
- the file of ``TripletMarginWithDistanceLoss``, whose user-supplied ``distance_function`` is
  differentiated by autograd (found through the registry, when that loss exists).

Subclassing ``torch.nn.<Loss>`` for the module shells is allowed (DESIGN.md section 3): a class
base is not a call. The checker is tested on snippets too, so that it can fail.
"""

from __future__ import annotations

import ast
import inspect
import pathlib
import unittest

import torch
from parameterized import parameterized

import mylosses
from mylosses import _registry

PACKAGE_DIR = pathlib.Path(mylosses.__file__).resolve().parent

# -- what is forbidden -------------------------------------------------------------------------

FORBIDDEN_NAMESPACES = ("torch.nn.functional", "torch._C._nn")

# The helpers a loss must write itself, as functions (torch.x, torch.special.x), methods (t.x())
# or modules (torch.nn.X). Names with a leading underscore (torch._log_softmax) count too.
FORBIDDEN_HELPERS = frozenset(
    {
        "log_softmax",
        "softmax",
        "softmin",
        "logsigmoid",
        "log_sigmoid",
        "pairwise_distance",
        "cosine_similarity",
        "cdist",
        "LogSoftmax",
        "Softmax",
        "Softmin",
        "LogSigmoid",
        "PairwiseDistance",
        "CosineSimilarity",
    }
)

# torch's loss functions, by name: everything in torch.nn.functional that is a loss, and
# mylosses' own functional names (a future loss is covered by its registry entry).
LOSS_FUNCTION_NAMES = frozenset(
    {
        n
        for n in dir(torch.nn.functional)
        if n.endswith("_loss") or "entropy" in n or n in ("kl_div",)
    }
    | {e.functional_name for e in _registry.entries()}
)

# torch.nn's loss classes (and the registry's, for a loss a newer torch adds).
LOSS_CLASS_NAMES = frozenset(
    {n for n in dir(torch.nn) if n.endswith("Loss")} | {e.name for e in _registry.entries()}
)

# Autograd running through forward to produce a gradient.
FORBIDDEN_AUTOGRAD = frozenset(
    {
        "torch.autograd.grad",
        "torch.autograd.backward",
        "torch.autograd.functional",
        "torch.func.grad",
        "torch.func.grad_and_value",
        "torch.func.vjp",
        "torch.func.jvp",
        "torch.func.jacrev",
        "torch.func.jacfwd",
        "torch.func.hessian",
        "torch.func.linearize",
    }
)

# Files allowed to hold the namespace torch.nn.functional as a value (to patch it, or to pair
# each of our functionals with torch's): no attribute of it, no call through it.
NAMESPACE_VALUE_ALLOWED = frozenset({"_patch.py", "_registry.py"})


def _autograd_allowed_files() -> frozenset[str]:
    """The file of TripletMarginWithDistanceLoss, where autograd differentiates the user's own
    distance_function (DESIGN.md section 2), once that loss exists in the registry."""
    files = set()
    for entry in _registry.entries():
        if entry.name == "TripletMarginWithDistanceLoss":
            path = pathlib.Path(inspect.getfile(entry.module)).resolve()
            files.add(path.relative_to(PACKAGE_DIR).as_posix())
    return frozenset(files)


# -- the checker -------------------------------------------------------------------------------


def _loss_name(identifier: str) -> bool:
    """Whether ``identifier`` names a torch loss function or one of its kernels
    (``mse_loss``, ``_ctc_loss``, ``mse_loss_backward``, ``nll_loss2d``, ...)."""
    bare = identifier.lstrip("_")
    return bare.startswith("cross_entropy") or any(
        bare == n or bare.startswith((n + "_", n + "2d")) for n in LOSS_FUNCTION_NAMES
    )


def _helper_name(identifier: str) -> bool:
    return identifier.lstrip("_") in FORBIDDEN_HELPERS or any(
        identifier.lstrip("_").startswith(h + "_") for h in ("log_softmax", "softmax")
    )


class _Checker(ast.NodeVisitor):
    """Collects every forbidden construct of one module's source, as ``"line: what"``."""

    def __init__(
        self, filename: str, *, namespace_value_ok: bool = False, autograd_ok: bool = False
    ) -> None:
        self.filename = filename
        self.namespace_value_ok = namespace_value_ok
        self.autograd_ok = autograd_ok
        self.aliases: dict[str, str] = {}  # local name -> dotted path it stands for
        self.findings: list[str] = []
        self._parents: dict[ast.AST, ast.AST] = {}

    def check(self, source: str) -> list[str]:
        tree = ast.parse(source, filename=self.filename)
        for parent in ast.walk(tree):
            for child in ast.iter_child_nodes(parent):
                self._parents[child] = parent
        # Imports anywhere in the file bind names for the whole file (good enough for a lint).
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                self._record_import(node)
        self.visit(tree)
        return self.findings

    def _flag(self, node: ast.AST, what: str) -> None:
        self.findings.append(f"{self.filename}:{getattr(node, 'lineno', '?')}: {what}")

    # imports -----------------------------------------------------------------------------------

    def _record_import(self, node: ast.Import | ast.ImportFrom) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    self.aliases[alias.asname] = alias.name
                else:  # `import torch.nn.functional` binds `torch`
                    root = alias.name.split(".")[0]
                    self.aliases[root] = root
                self._check_path(node, alias.name, imported=True)
        else:
            module = node.module or ""
            if node.level:  # relative imports stay inside mylosses
                module = "mylosses." + module if module else "mylosses"
            for alias in node.names:
                path = f"{module}.{alias.name}" if module else alias.name
                self.aliases[alias.asname or alias.name] = path
                self._check_path(node, path, imported=True)

    # resolution --------------------------------------------------------------------------------

    def _dotted(self, node: ast.AST) -> str | None:
        """The dotted path an expression stands for, through import aliases; None when its
        root is not an imported name (a local variable, a call result, ...)."""
        parts: list[str] = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name) or node.id not in self.aliases:
            return None
        parts.append(self.aliases[node.id])
        return ".".join(reversed(parts))

    def _check_path(
        self, node: ast.AST, path: str, *, imported: bool = False, full: str | None = None
    ) -> None:
        """Flag a reference to ``path`` (a fully resolved dotted name, a prefix of ``full``,
        the whole expression's path)."""
        if not (path == "torch" or path.startswith("torch.")):
            return
        full = full or path
        for namespace in FORBIDDEN_NAMESPACES:
            if path == namespace or path.startswith(namespace + "."):
                value_only = full == namespace and not imported
                if value_only and self.namespace_value_ok and not self._used_through(node):
                    return
                self._flag(node, f"references {path} (forbidden: {namespace})")
                return
        parts = path.split(".")
        for part in parts[1:]:
            if _loss_name(part):
                self._flag(node, f"references torch's loss function {path}")
                return
            if _helper_name(part):
                self._flag(node, f"references the helper {path} (write it)")
                return
        if parts[-1] in LOSS_CLASS_NAMES and imported:
            return  # importing a loss class to subclass it is fine; calling it is not
        if not self.autograd_ok:
            for forbidden in FORBIDDEN_AUTOGRAD:
                if path == forbidden or path.startswith(forbidden + "."):
                    self._flag(node, f"uses autograd to produce a gradient: {path}")
                    return

    def _used_through(self, node: ast.AST) -> bool:
        """Whether the namespace expression ``node`` has an attribute taken or is called."""
        parent = self._parents.get(node)
        return isinstance(parent, ast.Attribute) or (
            isinstance(parent, ast.Call) and parent.func is node
        )

    # visitors ----------------------------------------------------------------------------------

    def visit_Attribute(self, node: ast.Attribute) -> None:
        parent = self._parents.get(node)
        outermost = not isinstance(parent, ast.Attribute)
        path = self._dotted(node)
        if path is not None:
            # Check each prefix once, from the outermost attribute only, so that
            # `torch.nn.functional.relu` is reported once.
            if outermost:
                self._check_prefixes(node, path)
        else:
            # A method or attribute on something we cannot resolve (a tensor, self, ...).
            if _helper_name(node.attr):
                self._flag(node, f"calls the helper .{node.attr} (write it)")
            elif _loss_name(node.attr) and not self._is_ours(node):
                self._flag(node, f"reaches a loss function .{node.attr}")
            elif node.attr == "backward" and isinstance(parent, ast.Call) and parent.func is node:
                if not self.autograd_ok and not self._is_function_backward(node):
                    self._flag(node, "calls .backward(): autograd producing a gradient")
            elif node.attr == "forward" and self._is_super_call(node.value):
                self._flag(node, "calls super().forward(): torch's own loss")
        self.generic_visit(node)

    def _check_prefixes(self, node: ast.Attribute, path: str) -> None:
        before = len(self.findings)
        parts = path.split(".")
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            self._check_path(node, prefix, full=path)
            if len(self.findings) > before:
                return
        parent = self._parents.get(node)
        called = isinstance(parent, ast.Call) and parent.func is node
        if parts[0] == "torch" and parts[-1] in LOSS_CLASS_NAMES and called:
            self._flag(node, f"instantiates torch's loss {path}")
        if (
            parts[0] == "torch"
            and len(parts) >= 2
            and parts[-2] in LOSS_CLASS_NAMES
            and parts[-1] in ("forward", "__call__")
        ):
            self._flag(node, f"calls torch's loss {path}")

    def visit_Name(self, node: ast.Name) -> None:
        path = self.aliases.get(node.id)
        parent = self._parents.get(node)
        if path is not None and not isinstance(parent, ast.Attribute):
            self._check_path(node, path)
            if (
                path.startswith("torch.")
                and path.split(".")[-1] in LOSS_CLASS_NAMES
                and isinstance(parent, ast.Call)
                and parent.func is node
            ):
                self._flag(node, f"instantiates torch's loss {path}")

    def visit_Call(self, node: ast.Call) -> None:
        # getattr(torch.nn.functional, ...) and friends are attribute access in disguise.
        if isinstance(node.func, ast.Name) and node.func.id == "getattr" and node.args:
            target = self._dotted(node.args[0])
            if target is not None and any(
                target == ns or target.startswith(ns + ".") for ns in FORBIDDEN_NAMESPACES
            ):
                self._flag(node, f"getattr on {target}")
        self.generic_visit(node)

    def _is_ours(self, node: ast.Attribute) -> bool:
        root = node.value
        while isinstance(root, ast.Attribute):
            root = root.value
        return isinstance(root, ast.Name) and self.aliases.get(root.id, "").startswith("mylosses")

    @staticmethod
    def _is_super_call(node: ast.AST) -> bool:
        return (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "super"
        )

    def _is_function_backward(self, node: ast.Attribute) -> bool:
        """``cls.backward(ctx, ...)``, ``super().backward(ctx, ...)`` or ``_MSE.backward(...)``
        calls another hand-written backward (a Function's static method), not autograd."""
        value = node.value
        if self._is_super_call(value):
            return True
        if not isinstance(value, ast.Name):
            return False
        name = value.id.lstrip("_")
        return value.id == "cls" or name[:1].isupper()


def find_violations(
    source: str,
    filename: str = "<snippet>",
    *,
    namespace_value_ok: bool = False,
    autograd_ok: bool = False,
) -> list[str]:
    """Every construct of ``source`` that DESIGN.md section 2 forbids."""
    checker = _Checker(filename, namespace_value_ok=namespace_value_ok, autograd_ok=autograd_ok)
    return checker.check(source)


def _package_files() -> list[pathlib.Path]:
    return sorted(PACKAGE_DIR.rglob("*.py"))


# -- the tests ---------------------------------------------------------------------------------


class TestMyLossesIsFromScratch(unittest.TestCase):
    @parameterized.expand(
        [(p.relative_to(PACKAGE_DIR).as_posix(),) for p in _package_files()],
        name_func=lambda f, n, p: f"{f.__name__}_{parameterized.to_safe_name(p.args[0])}",
    )
    def test_file(self, relative: str) -> None:
        source = (PACKAGE_DIR / relative).read_text(encoding="utf-8")
        findings = find_violations(
            source,
            f"mylosses/{relative}",
            namespace_value_ok=relative in NAMESPACE_VALUE_ALLOWED,
            autograd_ok=relative in _autograd_allowed_files(),
        )
        self.assertEqual(findings, [], "\n" + "\n".join(findings))

    def test_every_loss_file_is_checked(self) -> None:
        """The registry's loss files are among the files read (the glob did not miss them)."""
        checked = {p.resolve() for p in _package_files()}
        for entry in _registry.entries():
            with self.subTest(loss=entry.name):
                self.assertIn(pathlib.Path(inspect.getfile(entry.module)).resolve(), checked)
                self.assertIn(pathlib.Path(inspect.getfile(entry.function)).resolve(), checked)


# Snippets the checker must flag (each is one violation of DESIGN.md section 2).
FORBIDDEN_SNIPPETS = [
    ("import_F", "import torch.nn.functional as F\n"),
    ("from_torch_nn_import_functional", "from torch.nn import functional\n"),
    ("from_F_import", "from torch.nn.functional import mse_loss\n"),
    ("F_call", "import torch.nn.functional as F\ny = F.mse_loss(a, b)\n"),
    ("nn_functional_attr", "from torch import nn\ny = nn.functional.relu(a)\n"),
    ("torch_nn_functional_attr", "import torch\ny = torch.nn.functional.softplus(a)\n"),
    ("torch_C_nn", "import torch\ny = torch._C._nn.mse_loss(a, b, 1)\n"),
    ("from_torch_C_import_nn", "from torch._C import _nn\n"),
    ("module_instantiated", "import torch\ny = torch.nn.MSELoss()(a, b)\n"),
    ("module_from_import", "from torch.nn import CrossEntropyLoss\ny = CrossEntropyLoss()(a, b)\n"),
    ("loss_forward", "import torch\ny = torch.nn.MSELoss.forward(self, a, b)\n"),
    (
        "super_forward",
        "class A(B):\n    def forward(self, a, b):\n        return super().forward(a, b)\n",
    ),
    ("torch_kl_div", "import torch\ny = torch.kl_div(a, b)\n"),
    ("aten_backward", "import torch\ng = torch.ops.aten.mse_loss_backward(g, a, b, 1)\n"),
    ("aten_ctc", "import torch\ny = torch._ctc_loss(a, b, c, d)\n"),
    ("aten_nll2d", "import torch\ny = torch.ops.aten.nll_loss2d_forward(a, b)\n"),
    ("bce_logits", "import torch\ny = torch.binary_cross_entropy_with_logits(a, b)\n"),
    ("log_softmax_fn", "import torch\ny = torch.log_softmax(a, 1)\n"),
    ("log_softmax_method", "y = logits.log_softmax(dim=1)\n"),
    ("softmax_method", "y = logits.softmax(1)\n"),
    ("private_softmax", "import torch\ny = torch._softmax(a, 1, False)\n"),
    ("special_log_softmax", "import torch\ny = torch.special.log_softmax(a, 1)\n"),
    ("pairwise_distance", "import torch\ny = torch.pairwise_distance(a, b)\n"),
    ("cosine_similarity", "import torch\ny = torch.cosine_similarity(a, b)\n"),
    ("cdist", "import torch\ny = torch.cdist(a, b)\n"),
    ("logsigmoid_module", "import torch\nf = torch.nn.LogSigmoid()\n"),
    ("autograd_grad", "import torch\n(g,) = torch.autograd.grad(y, x)\n"),
    ("autograd_grad_alias", "from torch.autograd import grad\n(g,) = grad(y, x)\n"),
    ("autograd_backward", "import torch\ntorch.autograd.backward(y)\n"),
    ("tensor_backward", "y.sum().backward()\n"),
    ("func_grad", "import torch\ng = torch.func.grad(f)(x)\n"),
    ("autograd_functional", "import torch\nj = torch.autograd.functional.jacobian(f, x)\n"),
    ("getattr_F", "import torch\nf = getattr(torch.nn.functional, 'mse_loss')\n"),
]

# Snippets the checker must accept: what a loss file legitimately does.
ALLOWED_SNIPPETS = [
    ("subclass_module", "import torch\nclass MSELoss(torch.nn.MSELoss):\n    pass\n"),
    ("subclass_from_import", "from torch.nn import MSELoss as _M\nclass MSELoss(_M):\n    pass\n"),
    (
        "docstring_of_torch",
        "import torch\nclass L(torch.nn.L1Loss):\n    __doc__ = torch.nn.L1Loss.__doc__\n",
    ),
    ("primitives", "import torch\ny = torch.logsumexp(a, 1) + torch.where(a > 0, a, b).clamp(0)\n"),
    ("sigmoid", "import torch\ny = torch.sigmoid(a) * a.exp().log1p()\n"),
    ("gather", "import torch\ny = a.gather(1, t).sum() / torch.matmul(a, b).amax()\n"),
    ("our_functional", "from mylosses.losses.l1 import l1_loss\ny = l1_loss(a, b)\n"),
    ("our_attr", "import mylosses\ny = mylosses.functional.mse_loss(a, b)\n"),
    (
        "function_backward",
        "class F(Function):\n    @staticmethod\n    def backward(ctx, g):\n        return g\n",
    ),
    ("functorch_probe", "import torch\nactive = torch._C._are_functorch_transforms_active()\n"),
    ("string_mention", "doc = 'torch.nn.functional.mse_loss is the reference'\n"),
]


class TestCheckerCanFail(unittest.TestCase):
    """The checker is only worth something if it flags what it should, and only that."""

    @parameterized.expand(FORBIDDEN_SNIPPETS)
    def test_flags(self, _: str, snippet: str) -> None:
        self.assertNotEqual(find_violations(snippet), [], f"not flagged:\n{snippet}")

    @parameterized.expand(ALLOWED_SNIPPETS)
    def test_accepts(self, _: str, snippet: str) -> None:
        self.assertEqual(find_violations(snippet), [], f"wrongly flagged:\n{snippet}")

    def test_namespace_value_allowed_only_as_a_value(self) -> None:
        value = "import torch\nSPACES = (torch.nn.functional,)\nfns = vars(torch.nn.functional)\n"
        self.assertEqual(find_violations(value, namespace_value_ok=True), [])
        self.assertNotEqual(find_violations(value), [])
        through = "import torch\ny = torch.nn.functional.mse_loss(a, b)\n"
        self.assertNotEqual(find_violations(through, namespace_value_ok=True), [])

    def test_autograd_allowed_only_where_listed(self) -> None:
        snippet = "import torch\n(g,) = torch.autograd.grad(d, x)\n"
        self.assertEqual(find_violations(snippet, autograd_ok=True), [])
        self.assertNotEqual(find_violations(snippet), [])

    def test_a_planted_violation_in_a_real_loss_file_is_found(self) -> None:
        """A real loss file with one forbidden line added fails the check."""
        entry = _registry.entries()[0]
        source = pathlib.Path(inspect.getfile(entry.module)).read_text(encoding="utf-8")
        self.assertEqual(find_violations(source), [])
        planted = source + "\n_oops = torch.nn.functional.mse_loss\n"
        self.assertNotEqual(find_violations(planted), [])


if __name__ == "__main__":
    unittest.main()
