package org.fhirspine.testserver;

import ca.uhn.fhir.batch2.jobs.export.BulkDataExportProvider;
import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.context.support.IValidationSupport;
import ca.uhn.fhir.jpa.api.config.JpaStorageSettings;
import ca.uhn.fhir.jpa.api.dao.IFhirSystemDao;
import ca.uhn.fhir.jpa.provider.JpaCapabilityStatementProvider;
import ca.uhn.fhir.jpa.provider.JpaSystemProvider;
import ca.uhn.fhir.jpa.provider.ValueSetOperationProvider;
import ca.uhn.fhir.jpa.search.DatabaseBackedPagingProvider;
import ca.uhn.fhir.rest.api.EncodingEnum;
import ca.uhn.fhir.rest.server.RestfulServer;
import ca.uhn.fhir.rest.server.provider.ResourceProviderFactory;
import ca.uhn.fhir.rest.server.util.ISearchParamRegistry;
import org.springframework.beans.factory.annotation.Autowired;
import org.springframework.beans.factory.annotation.Qualifier;

/**
 * The FHIR REST endpoint: HAPI's {@link RestfulServer} with the JPA resource providers, the
 * system provider (transaction/batch, $meta, ...), the ValueSet terminology operations
 * ($expand, $validate-code), a JPA capability statement, paging backed by the database and
 * the Bulk Data export provider. (CodeSystem $lookup, $subsumes and $validate-code come with
 * the CodeSystem resource provider itself.)
 */
public class FhirServlet extends RestfulServer {

	static final int DEFAULT_PAGE_SIZE = 20;
	static final int MAXIMUM_PAGE_SIZE = 200;

	@Autowired
	private FhirContext myFhirContext;

	@Autowired
	private ResourceProviderFactory myResourceProviderFactory;

	@Autowired
	@Qualifier("mySystemProviderR4")
	private JpaSystemProvider<?, ?> mySystemProvider;

	@Autowired
	private IFhirSystemDao<?, ?> mySystemDao;

	@Autowired
	private JpaStorageSettings myStorageSettings;

	@Autowired
	private ISearchParamRegistry mySearchParamRegistry;

	@Autowired
	private IValidationSupport myValidationSupport;

	@Autowired
	private DatabaseBackedPagingProvider myPagingProvider;

	@Autowired
	private BulkDataExportProvider myBulkDataExportProvider;

	@Autowired
	private ValueSetOperationProvider myValueSetOperationProvider;

	@Override
	protected void initialize() {
		setFhirContext(myFhirContext);
		setDefaultResponseEncoding(EncodingEnum.JSON);

		registerProviders(myResourceProviderFactory.createProviders());
		registerProvider(mySystemProvider);
		registerProvider(myValueSetOperationProvider);
		registerProvider(myBulkDataExportProvider);

		myPagingProvider.setDefaultPageSize(DEFAULT_PAGE_SIZE);
		myPagingProvider.setMaximumPageSize(MAXIMUM_PAGE_SIZE);
		setPagingProvider(myPagingProvider);

		setServerConformanceProvider(new JpaCapabilityStatementProvider(
				this, mySystemDao, myStorageSettings, mySearchParamRegistry, myValidationSupport));
	}
}
