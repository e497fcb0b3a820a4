package org.fhirspine.testserver;

import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.context.support.IValidationSupport;
import ca.uhn.fhir.jpa.validation.JpaValidationSupportChain;
import ca.uhn.fhir.util.FhirTerser;
import org.hl7.fhir.common.hapi.validation.support.ValidationSupportChain;
import org.hl7.fhir.common.hapi.validation.validator.WorkerContextValidationSupportAdapter;
import org.hl7.fhir.instance.model.api.IBaseResource;

import java.util.ArrayList;
import java.util.Collections;
import java.util.HashSet;
import java.util.List;
import java.util.Set;

/**
 * HAPI's JPA validation support chain, made to work with its cache switched off.
 *
 * <p>The launcher runs the chain without a cache ({@code CacheConfiguration.disabled()}, see
 * {@link HapiJpaServerConfig}) so that terminology answers follow every CodeSystem / ValueSet
 * PUT. In HAPI FHIR 8.8.0, {@code ValidationSupportChain.fetchAllStructureDefinitions()} then
 * always answers an empty list: it collects the StructureDefinitions of its members but copies
 * them into the list it returns only when the expiring cache exists (read from the 8.8.0
 * bytecode). The FHIR validator's parser looks a resource's type up in that list, so every
 * {@code $validate} failed with the fatal issue "This content cannot be parsed (unknown or
 * unrecognized resource name 'Patient')".
 *
 * <p>This override asks the members in chain order every time and keeps the first
 * StructureDefinition per canonical URL, leaving out those without one (the chain's own rules and
 * precedence: with
 * {@code allowDatabaseValidationOverride} stored resources come before HAPI's built-in
 * core definitions). Everything else, including the chain's members and order, is HAPI's.
 */
public class UncachedJpaValidationSupportChain extends JpaValidationSupportChain {

	public UncachedJpaValidationSupportChain(
			FhirContext theFhirContext,
			ValidationSupportChain.CacheConfiguration theCacheConfiguration,
			WorkerContextValidationSupportAdapter theWorkerContextValidationSupportAdapter) {
		super(theFhirContext, theCacheConfiguration, theWorkerContextValidationSupportAdapter);
	}

	@Override
	public List<IBaseResource> fetchAllStructureDefinitions() {
		FhirTerser terser = getFhirContext().newTerser();
		List<IBaseResource> result = new ArrayList<>();
		Set<String> seenUrls = new HashSet<>();
		for (IValidationSupport member : getValidationSupports()) {
			List<IBaseResource> definitions = member.fetchAllStructureDefinitions();
			if (definitions == null) {
				continue;
			}
			for (IBaseResource definition : definitions) {
				String url = terser.getSinglePrimitiveValueOrNull(definition, "url");
				// As the chain itself does: a definition without a URL is left out.
				if (url != null && !url.isBlank() && seenUrls.add(url)) {
					result.add(definition);
				}
			}
		}
		return Collections.unmodifiableList(result);
	}
}
