"""The NeMo 2 side of nemo-erprm: `ERPRMModel` (an `llm.GPTModel`), its configs per model
family, the loss reduction, and the DataModule. Importing this package imports NeMo."""
